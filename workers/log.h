/*
 * log.h - logfmt lines on stderr (log.c), for the workers and for the SPF
 * helper process alike: "ts=... level=... " then the caller's pairs.
 */
#ifndef MXGATE_LOG_H
#define MXGATE_LOG_H

enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

extern int log_level; /* lines below it are dropped */
void log_line(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
