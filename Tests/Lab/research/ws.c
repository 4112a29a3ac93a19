// ws: mmap TOTAL MiB anon, write every page, then run a schedule of phases.
//   ws TOTAL_MIB HOT_MIB READYFILE PHASE...   PHASE = bSECS (touch HOT repeatedly) | iSECS (idle) | aSECS (touch all)
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
int main(int argc,char**argv){
  size_t total=(size_t)atol(argv[1])<<20, hot=(size_t)atol(argv[2])<<20;
  volatile uint8_t *m=mmap(NULL,total,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  if(m==MAP_FAILED){perror("mmap");return 1;}
  madvise((void*)m,total,getenv("WS_THP")?MADV_HUGEPAGE:MADV_NOHUGEPAGE);
  for(size_t o=0;o<total;o+=4096) m[o]=1;
  close(open(argv[3],O_WRONLY|O_CREAT|O_TRUNC,0644));
  printf("ws %.3f: ready (%zu MiB, hot %zu MiB)\n",now(),total>>20,hot>>20);fflush(stdout);
  for(int a=4;a<argc;a++){
    char k=argv[a][0]; double secs=atof(argv[a]+1), end=now()+secs; long sweeps=0;
    printf("ws %.3f: phase %s\n",now(),argv[a]);fflush(stdout);
    while(now()<end){
      if(k=='i'){usleep(200000);continue;}
      size_t lim = k=='a'?total:hot;
      for(size_t o=0;o<lim;o+=4096) m[o]++;
      sweeps++; usleep(50000);
    }
    printf("ws %.3f: end %s sweeps=%ld\n",now(),argv[a],sweeps);fflush(stdout);
  }
  printf("ws %.3f: done\n",now());fflush(stdout);
  for(;;)pause();
}
