/*
 * filter.h - the filter chain: policy at each stage of a session.
 *
 * A filter looks at one or more stages (connect, HELO, MAIL, RCPT, DATA,
 * end of data) and answers accept, reject (code, enhanced code, text),
 * tempfail, tag (headers to prepend; the message goes on), or wait: its
 * answer depends on work still running (an SPF lookup), and the worker runs
 * the chain for that stage again once the work is done. The session waits;
 * the worker serves its other sessions meanwhile.
 *
 * Filters are pure functions of the facts the worker gives them: no I/O, no
 * state of their own per session (whatever must be remembered lives in the
 * facts, owned by the session), so running a stage twice gives the same
 * answer. The one effect a filter may ask for is starting asynchronous work,
 * through the hooks in filter_host_t.
 *
 * Adding a filter is a file in filters/ defining a filter_def_t and a line
 * in filter.c's table; the config key `filters` orders them.
 */
#ifndef MXGATE_FILTER_H
#define MXGATE_FILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "addr.h"
#include "config.h"
#include "slice.h"

enum filter_stage { FS_CONNECT = 0, FS_HELO, FS_MAIL, FS_RCPT, FS_DATA, FS_DATA_END, FS_COUNT };

enum filter_act {
    FA_ACCEPT = 0, /* no objection: the next filter decides */
    FA_TAG,        /* accept, with headers appended to facts->hdr */
    FA_REJECT,     /* a 5xx */
    FA_TEMPFAIL,   /* a 4xx; 421 also closes the session */
    FA_WAIT,       /* ask again when the asynchronous work is done */
};

/* SPF as one transaction sees it; owned by the transaction (filters/spf.c). */
typedef struct spf_state {
    uint8_t status;       /* enum spf_status */
    uint8_t result;       /* enum spf_result (workers/spfd/spf_proto.h numbering) */
    char *text;           /* received value, NUL, comment, NUL, reply text, NUL */
    uint32_t received_len, comment_len, text_cap;
} spf_state_t;

enum spf_status { SPF_IDLE = 0, SPF_PENDING, SPF_DONE };

/* The DNSBL lookups of one session, started at connect (filters/dnsbl.c);
 * owned by the session. */
typedef struct dnsbl_state {
    uint8_t status; /* enum dnsbl_status */
    int score;      /* the weights of the lists that counted, summed */
    uint32_t hit;   /* bit i: list i of the chain's sites counted */
} dnsbl_state_t;
enum dnsbl_status { DNSBL_IDLE = 0, DNSBL_PENDING, DNSBL_DONE };

/* The chain's DNSBL sites (the dnsbl filter's state), for the lookups. */
struct dnsbl_site;
typedef struct dnsbl_list {
    struct dnsbl_site *site;
    size_t n;
} dnsbl_list_t;

typedef struct filter_facts filter_facts_t;

/* The per-address rates (rate_connections, rate_messages, rate_recipients)
 * the host found exceeded for this event. */
#define FILTER_RATE_CONN 0x01u
#define FILTER_RATE_MSG 0x02u
#define FILTER_RATE_RCPT 0x04u

/* What a filter may ask of the worker: hooks of the transaction the facts
 * describe (ctx). */
typedef struct filter_host {
    /* Start an SPF check of this transaction; the result lands in
     * facts->spf (at once, from the cache, or later). */
    void (*spf_start)(void *ctx, const filter_facts_t *fx);
    void *ctx;
} filter_host_t;

/* Everything a filter may look at. Slices live as long as the stage. */
struct filter_facts {
    const mx_config_t *cfg;
    const filter_host_t *host;
    uint8_t family;        /* AF_INET or AF_INET6 */
    const uint8_t *addr;   /* the client's address, 4 or 16 octets */
    uint32_t conn_total;   /* client connections, all workers (connect stage) */
    uint32_t conn_per_ip;  /* from this client's address */
    slice_t helo;          /* empty before HELO */
    const smtp_path_t *sender; /* MAIL onwards */
    const smtp_path_t *rcpt;   /* RCPT */
    uint32_t messages;     /* transactions begun in this connection, this one included */
    uint32_t rcpts;        /* RCPT commands in this connection, this one included */
    uint8_t rate_over;     /* FILTER_RATE_*: this address is over that rate (the host took the token once) */
    spf_state_t *spf;
    const dnsbl_state_t *dnsbl; /* the session's lookups; NULL when none were asked */
    /* The running filter's own state (what its init made), set by
     * filter_run() for each filter it calls. */
    const void *self;
    /* FA_TAG: headers ("Name: value\r\n"...) are appended here. */
    char *hdr;
    size_t hdr_len, hdr_cap;
};

/*
 * A verdict carries its own reply: nothing downstream of the filter rebuilds
 * it. `why` names the rule for the log ("relay", "max_connections", ...).
 */
typedef struct filter_verdict {
    uint8_t act;      /* enum filter_act */
    int code;
    const char *esc;
    const char *text; /* static, or in facts->spf (lives with the transaction) */
    const char *why;  /* static */
} filter_verdict_t;

/* Fill *v with a refusal and return its act. */
static inline enum filter_act filter_refuse(filter_verdict_t *v, enum filter_act act, int code, const char *esc,
                                            const char *text, const char *why)
{
    *v = (filter_verdict_t){ (uint8_t)act, code, esc, text, why };
    return act;
}

typedef struct filter_def {
    const char *name;
    /* Load what the filter needs (a file) into *state, which its stages
     * then find in facts->self; 0, or -1 with err. Each chain has its own
     * state, so a reload builds a new one while the old chain still serves.
     * Main thread; the stages only read the state. */
    int (*init)(const mx_config_t *cfg, void **state, char *err, size_t errlen);
    void (*fini)(void *state);
    /* One stage; fill v and return its act. NULL: no opinion. */
    enum filter_act (*stage[FS_COUNT])(const filter_facts_t *fx, filter_verdict_t *v);
} filter_def_t;

/* The chain the config asks for, in order. */
typedef struct filter_chain {
    const filter_def_t *f[16];
    void *state[16]; /* each filter's, from its init */
    int n;
    bool spf; /* SPF is in the chain: the worker needs the helper */
    const dnsbl_list_t *dnsbl; /* the dnsbl filter is in the chain: its sites, asked at connect */
} filter_chain_t;

/* Build the chain from cfg->filters and initialize each filter (start-up
 * or reload, main thread). -1 with err naming the bad filter; nothing is
 * left to free then. */
int filter_chain_init(filter_chain_t *ch, const mx_config_t *cfg, char *err, size_t errlen)
    __attribute__((warn_unused_result));
void filter_chain_fini(filter_chain_t *ch);

/*
 * Run one stage: filters in order until one rejects, tempfails or waits.
 * Tags add up. Returns the final verdict (FA_ACCEPT or FA_TAG when every
 * filter let it through).
 */
enum filter_act filter_run(const filter_chain_t *ch, enum filter_stage st, filter_facts_t *fx,
                           filter_verdict_t *v);

/* Append a header line (text without CRLF; folded at spaces when long). */
bool filter_add_header(filter_facts_t *fx, const char *name, const char *value, size_t vlen);

extern const filter_def_t filter_relay, filter_recipients, filter_limits, filter_spf, filter_dnsbl;

#endif
