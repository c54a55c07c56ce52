/*
 * spfd.h - the SPF helper process: `mxgate --spf-helper --fds 3,4 ...`.
 *
 * The gateway starts this executable again with --spf-helper as argv[1] and
 * hands it one end of a SOCK_SEQPACKET socketpair per worker; requests and
 * replies are the datagrams of spf_proto.h. The helper runs libspf2 (and
 * its DNS waits) in a pool of threads, unprivileged, with no listening
 * socket, and dies with the gateway (PR_SET_PDEATHSIG; the thread that
 * started it must live as long as the gateway does).
 *
 * Exit status: 0 when every socket has reached EOF (the gateway is gone),
 * 2 for a bad command line, 1 when start-up fails (privileges could not be
 * dropped, no resolver, out of memory).
 */
#ifndef MXGATE_SPFD_H
#define MXGATE_SPFD_H

/* argv[1] is "--spf-helper"; returns the process exit status. */
int spfd_main(int argc, char **argv);

#endif
