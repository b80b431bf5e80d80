/* worker.h — a worker thread (worker.c): set-up, its loop, tear-down. */
#ifndef LK_WORKER_H
#define LK_WORKER_H

#include "relay/state.h"

/* Slots, tables and pools of worker `index`; its backend is set up by its own thread. */
int lk_worker_init(lk_worker *w, lk_relay *r, uint32_t index);
void lk_worker_destroy(lk_worker *w);
/* The thread: backend set-up, then the loop until lk_relay_stop(). */
void *lk_worker_main(void *arg);

#endif
