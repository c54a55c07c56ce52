/*
 * timer.h - every wait's deadline, per worker: a hashed timing wheel.
 *
 * Deadlines differ per session (a command's clock starts at its first byte,
 * a body earns time by the bytes it brings), so one FIFO per timeout no
 * longer stays sorted. A wheel of TIMER_SLOTS lists, TIMER_TICK_MS apart,
 * takes any deadline in O(1), and each tick looks at one slot: nodes whose
 * deadline is a lap or more away stay where they are.
 *
 * Nodes are embedded in their owner's struct (a session, a downstream
 * connection, an SPF request) with the owner's function to call; the wheel
 * never looks inside the owner. A node is armed at most once: arming it
 * again moves it. The owner must stop a node before freeing it.
 */
#ifndef MXGATE_TIMER_H
#define MXGATE_TIMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TIMER_TICK_MS 100u
#define TIMER_SLOTS 2048u /* 204.8 s per lap */

typedef struct worker worker_t;
typedef struct timer_node timer_node_t;
typedef void timer_fn(worker_t *w, timer_node_t *t);

struct timer_node {
    timer_node_t *prev, *next; /* NULL when not armed */
    uint64_t deadline;         /* ms, the worker's monotonic clock */
    timer_fn *fire;
};

typedef struct timer_wheel {
    timer_node_t slot[TIMER_SLOTS]; /* list heads */
    uint64_t done;                  /* every slot up to this tick has been run */
    uint32_t armed;
} timer_wheel_t;

/* The owner's struct from its embedded node. */
#define TIMER_OWNER(node, type, member) ((type *)(void *)((char *)(node) - offsetof(type, member)))

void timer_wheel_init(timer_wheel_t *tw, uint64_t now);

/* Call fire(w, t) once the clock passes deadline (ms). */
void timer_arm(timer_wheel_t *tw, timer_node_t *t, uint64_t deadline, timer_fn *fire);
void timer_stop(timer_wheel_t *tw, timer_node_t *t);

static inline bool timer_armed(const timer_node_t *t)
{
    return t->next != NULL;
}

/* Fire every node whose deadline is <= now. A fired node is stopped before
 * its function runs, so the function may arm it again. */
void timer_run(timer_wheel_t *tw, worker_t *w, uint64_t now);

#endif
