/**
 * Waiting for a task or flow to end. The record is polled with
 * exponential backoff, and a subscription to `GET /v1/events` (filtered
 * to the task's flow) wakes the poll as soon as something relevant
 * commits, so a wait usually returns within a few milliseconds of the end
 * without polling fast. The poll also covers what the events cannot: a
 * host with no room for another subscriber (503) is simply polled, and a
 * flow's own state, which is written just after its last task's, is read
 * again shortly after that task's event.
 *
 * @module
 */

import { WaitTimeoutError, TaskhostError } from "./errors.js";
import type { TaskEvent } from "./events.js";
import { follow, sleep } from "./signals.js";
import type { EventStream } from "./sse.js";

/** How long to wait. */
export interface WaitOptions {
  /** Give up after this many milliseconds, rejecting with a {@link WaitTimeoutError}. Default: no limit. */
  timeoutMs?: number;
  /** Give up when this aborts, rejecting with its reason. */
  signal?: AbortSignal;
}

/** What a wait reads and listens to. */
export interface WaitPlan<T> {
  /** What is waited for, for the timeout's message (e.g. `task 019a…`). */
  what: string;
  /** Reads the record. */
  read(signal: AbortSignal): Promise<T>;
  /** Whether the record has ended. */
  done(record: T): boolean;
  /** Subscribes to the events that may end it, given the record read first. */
  subscribe(record: T, signal: AbortSignal): Promise<EventStream<TaskEvent>>;
  /** Whether an event is worth reading the record again for. */
  relevant(event: TaskEvent): boolean;
}

/** The first poll interval, and the interval after each relevant event. */
const FIRST_DELAY_MS = 100;
/** The longest poll interval. */
const MAX_DELAY_MS = 2_000;

/** Reads the record until `plan.done`, and returns it. */
export async function waitFor<T>(plan: WaitPlan<T>, options: WaitOptions = {}): Promise<T> {
  const controller = new AbortController();
  const release = follow(options.signal, controller);
  const timer =
    options.timeoutMs === undefined
      ? undefined
      : setTimeout(() => controller.abort(new WaitTimeoutError(plan.what, options.timeoutMs ?? 0)), options.timeoutMs);
  const signal = controller.signal;
  let wakeups: Wakeups | undefined;
  try {
    let record = await plan.read(signal);
    let delay = FIRST_DELAY_MS;
    for (;;) {
      if (plan.done(record)) return record;
      // Subscribed once the first read tells what to filter on; a refused subscription is asked for again at the next poll.
      if (!wakeups) {
        const stream = await subscribeOrPoll(plan, record, signal);
        if (stream) {
          wakeups = new Wakeups(stream, plan.relevant);
          // Read again: the subscription may have begun after the end.
          record = await plan.read(signal);
          continue;
        }
      }
      const woke = wakeups ? await wakeups.next(delay) : await sleep(delay, signal).then(() => "timer" as const);
      if (woke === "ended") {
        wakeups?.close();
        wakeups = undefined;
        await sleep(delay, signal);
      }
      delay = woke === "event" ? FIRST_DELAY_MS : Math.min(delay * 2, MAX_DELAY_MS);
      record = await plan.read(signal);
    }
  } finally {
    clearTimeout(timer);
    release();
    wakeups?.close();
  }
}

/** A subscription for `plan`, or `undefined` when the host has no room for one more subscriber (then the wait polls). */
async function subscribeOrPoll<T>(plan: WaitPlan<T>, record: T, signal: AbortSignal): Promise<EventStream<TaskEvent> | undefined> {
  try {
    return await plan.subscribe(record, signal);
  } catch (error) {
    if (error instanceof TaskhostError && error.status === 503) return undefined;
    throw error;
  }
}

/** Relevant events of a stream, awaited with a deadline. */
class Wakeups {
  readonly #stream: EventStream<TaskEvent>;
  readonly #events: AsyncIterator<TaskEvent>;
  readonly #relevant: (event: TaskEvent) => boolean;
  /** The read in progress, kept across deadlines so that no event is lost. */
  #pending: Promise<IteratorResult<TaskEvent>> | undefined;

  constructor(stream: EventStream<TaskEvent>, relevant: (event: TaskEvent) => boolean) {
    this.#stream = stream;
    this.#events = stream[Symbol.asyncIterator]();
    this.#relevant = relevant;
  }

  /** `event` once a relevant event arrives, `timer` after `ms` without one, `ended` when the stream ends. */
  async next(ms: number): Promise<"event" | "timer" | "ended"> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<"timer">((resolve) => {
      timer = setTimeout(() => resolve("timer"), ms);
    });
    try {
      for (;;) {
        if (!this.#pending) {
          this.#pending = this.#events.next();
          // Handled here as well, so that a read still pending when the wait ends never rejects unobserved.
          this.#pending.catch(() => {});
        }
        const next = await Promise.race([this.#pending, deadline]);
        if (next === "timer") return "timer";
        this.#pending = undefined;
        if (next.done) return "ended";
        if (this.#relevant(next.value)) return "event";
      }
    } finally {
      clearTimeout(timer);
    }
  }

  close(): void {
    this.#stream.close();
  }
}
