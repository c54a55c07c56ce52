/*
 * timer.c - the timing wheel (see timer.h).
 */
#include "timer.h"

void timer_wheel_init(timer_wheel_t *tw, uint64_t now)
{
    for (uint32_t i = 0; i < TIMER_SLOTS; i++)
        tw->slot[i].prev = tw->slot[i].next = &tw->slot[i];
    tw->done = now / TIMER_TICK_MS;
    tw->armed = 0;
}

void timer_stop(timer_wheel_t *tw, timer_node_t *t)
{
    if (!t->next)
        return;
    t->prev->next = t->next;
    t->next->prev = t->prev;
    t->next = t->prev = NULL;
    tw->armed--;
}

void timer_arm(timer_wheel_t *tw, timer_node_t *t, uint64_t deadline, timer_fn *fire)
{
    timer_stop(tw, t);
    t->deadline = deadline;
    t->fire = fire;
    /* A deadline in a tick already run goes to the next one to run. */
    uint64_t tick = (deadline + TIMER_TICK_MS - 1) / TIMER_TICK_MS;
    if (tick <= tw->done)
        tick = tw->done + 1;
    timer_node_t *head = &tw->slot[tick % TIMER_SLOTS];
    t->prev = head->prev;
    t->next = head;
    head->prev->next = t;
    head->prev = t;
    tw->armed++;
}

void timer_run(timer_wheel_t *tw, worker_t *w, uint64_t now)
{
    uint64_t last = now / TIMER_TICK_MS;
    /* After a long stall one lap covers every slot. */
    if (last > tw->done + TIMER_SLOTS)
        tw->done = last - TIMER_SLOTS;
    while (tw->done < last) {
        tw->done++;
        timer_node_t *head = &tw->slot[tw->done % TIMER_SLOTS];
        if (head->next == head)
            continue;
        /* Take the slot's list aside: a callback may stop or arm any node,
         * and nodes it arms go to later ticks, never back into this walk. */
        timer_node_t local = { .prev = head->prev, .next = head->next };
        local.next->prev = &local;
        local.prev->next = &local;
        head->next = head->prev = head;
        while (local.next != &local) {
            timer_node_t *n = local.next;
            local.next = n->next;
            n->next->prev = &local;
            if (n->deadline <= now) {
                n->next = n->prev = NULL;
                tw->armed--;
                n->fire(w, n);
            } else { /* a lap or more away: back into its slot */
                n->prev = head->prev;
                n->next = head;
                head->prev->next = n;
                head->prev = n;
            }
        }
    }
}
