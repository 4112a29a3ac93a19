#if canImport(Glibc)
import Glibc
#endif

func currentPID() -> Int32 { getpid() }
