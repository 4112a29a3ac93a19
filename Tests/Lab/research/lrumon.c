// lrumon CGPATH PERIOD_MS COUNT CAN_SWAP FORCE_SCAN [NOAGE]
// each period: write "+ ID 0 MAXSEQ CAN_SWAP FORCE_SCAN" to /sys/kernel/debug/lru_gen, read back, print gens
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static char buf[1<<20];
struct gen{unsigned long seq,age,anon,file;};
// parse: returns number of gens for memcg with path p on node 0; sets id
static int parse(const char*p,int*id,struct gen*g){
  int fd=open("/sys/kernel/debug/lru_gen",O_RDONLY); if(fd<0){perror("open r");exit(1);}
  size_t n=0; ssize_t r; while((r=read(fd,buf+n,sizeof buf-1-n))>0) n+=r; buf[n]=0; close(fd);
  int in=0,node=-1,ng=0; char*save; 
  for(char*line=strtok_r(buf,"\n",&save);line;line=strtok_r(NULL,"\n",&save)){
    int i; char path[4096];
    if(sscanf(line," memcg %d %4095s",&i,path)>=1 && strncmp(line,"memcg",5)==0){
      if(sscanf(line,"memcg %d %4095s",&i,path)<2) path[0]=0, strcpy(path,"");
      in = strcmp(path,p)==0; if(in)*id=i; continue;}
    if(!in)continue;
    if(sscanf(line," node %d",&node)==1)continue;
    if(node==0){struct gen x; if(sscanf(line,"%lu %lu %lu %lu",&x.seq,&x.age,&x.anon,&x.file)==4) g[ng++]=x;}
  }
  return ng;
}
int main(int argc,char**argv){
  const char*p=argv[1]; int period=atoi(argv[2]),count=atoi(argv[3]),cs=atoi(argv[4]),fs=atoi(argv[5]); int noage=argc>6;
  double t0=now();
  for(int it=0;it<count;it++){
    struct gen g[64]; int id=-1;
    double a=now(); int ng=parse(p,&id,g); double b=now();
    if(ng==0){printf("memcg %s not found\n",p);return 1;}
    unsigned long maxseq=g[ng-1].seq; int err=0; double c=b,d=b;
    if(!noage){
      char cmd[128]; int l=snprintf(cmd,sizeof cmd,"+ %d 0 %lu %d %d",id,maxseq,cs,fs);
      int fd=open("/sys/kernel/debug/lru_gen",O_WRONLY); c=now();
      if(write(fd,cmd,l)<0) err=errno;
      d=now(); close(fd);
    }
    ng=parse(p,&id,g); if(!noage && !err && g[ng-1].seq!=maxseq+1) printf("WARN max_seq %lu -> %lu\n",maxseq,g[ng-1].seq);
    unsigned long tot=0; for(int i=0;i<ng;i++) tot+=g[i].anon+g[i].file;
    unsigned long y0=g[ng-1].anon+g[ng-1].file, y1=ng>1?g[ng-2].anon+g[ng-2].file:0;
    printf("mon %7.2f T=%.3f id=%d read=%.1fms age=%.1fms err=%d(%s) gens:",now()-t0,now(),id,(b-a)*1e3,(d-c)*1e3,err,err?strerror(err):"ok");
    for(int i=0;i<ng;i++) printf(" [%lu %lums a%lu f%lu]",g[i].seq,g[i].age,g[i].anon,g[i].file);
    printf(" | young2=%.3f young1=%.3f tot=%lu\n", tot?(double)(y0+y1)/tot:0, tot?(double)y0/tot:0, tot);
    fflush(stdout);
    double next=t0+(it+1)*period/1000.0; double s=next-now(); if(s>0) usleep((useconds_t)(s*1e6));
  }
  return 0;
}
