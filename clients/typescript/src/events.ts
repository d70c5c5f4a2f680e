/**
 * The typed events of the two streams the API serves: task transitions
 * (`GET /v1/events`) and a followed task's log lines
 * (`GET /v1/tasks/{id}/logs?follow=true`).
 *
 * @module
 */

import type { SseMessage } from "./sse.js";
import type { EventsMissed, LogLine, Stopping, TaskMoved, TaskState } from "./types.js";

/** One event of `GET /v1/events`. */
export type TaskEvent =
  /** A task was created or entered a state. `id` is the event's id (`RUN-SEQ`), to resume after it. */
  | { event: "task"; id: string | undefined; data: TaskMoved }
  /** Events were lost: read the records again (after `too_slow` the stream ends; after `gap` and `unheard` it goes on). */
  | { event: "missed"; data: EventsMissed }
  /** The server is stopping: the stream ends. */
  | { event: "stopping"; data: Stopping };

/** Which transitions `events()` streams; the filters combine. */
export interface EventFilter {
  /** Only this queue's tasks. */
  queue?: string;
  /** Only this flow's tasks (a flow id; a task submitted from outside is its own flow). */
  flow?: string;
  /** Only this plugin's tasks. */
  plugin?: string;
  /** Only transitions into these states. */
  state?: TaskState | readonly TaskState[];
  /** Resume after this event id (a `task` event's `id`): missed events come first. */
  after?: string;
}

/** One event of following a task's logs. */
export type LogEvent =
  /** A line the attempt wrote. */
  | { event: "line"; data: LogLine }
  /** Lines dropped over the cap before this follower saw them. */
  | { event: "skipped"; data: { lines: number } }
  /** Another attempt began; its lines follow. */
  | { event: "attempt"; data: { attempt: number } }
  /** The task ended; the stream ends. */
  | { event: "end"; data: { state: TaskState; attempts: number } }
  /** The server is stopping; the stream ends. */
  | { event: "stopping"; data: Stopping };

/** The query string of an {@link EventFilter}. */
export function eventQuery(filter: EventFilter): Record<string, string | undefined> {
  const state = typeof filter.state === "string" ? filter.state : filter.state?.join(",");
  return { queue: filter.queue, flow: filter.flow, plugin: filter.plugin, state, after: filter.after };
}

/** A `/v1/events` message as a {@link TaskEvent}; kinds this client does not know are skipped. */
export function decodeTaskEvent(message: SseMessage): TaskEvent | undefined {
  switch (message.event) {
    case "task":
      return { event: "task", id: message.lastEventId, data: JSON.parse(message.data) as TaskMoved };
    case "missed":
      return { event: "missed", data: JSON.parse(message.data) as EventsMissed };
    case "stopping":
      return { event: "stopping", data: JSON.parse(message.data) as Stopping };
    default:
      return undefined;
  }
}

/**
 * A followed log's message as a {@link LogEvent}. The server sends each
 * variant wrapped in its name (`{"line": {...}}`), except `stopping`;
 * kinds this client does not know are skipped.
 */
export function decodeLogEvent(message: SseMessage): LogEvent | undefined {
  const data = (): Record<string, unknown> => JSON.parse(message.data) as Record<string, unknown>;
  switch (message.event) {
    case "line":
      return { event: "line", data: data()["line"] as LogLine };
    case "skipped":
      return { event: "skipped", data: data()["skipped"] as { lines: number } };
    case "attempt":
      return { event: "attempt", data: data()["attempt"] as { attempt: number } };
    case "end":
      return { event: "end", data: data()["end"] as { state: TaskState; attempts: number } };
    case "stopping":
      return { event: "stopping", data: data() as unknown as Stopping };
    default:
      return undefined;
  }
}
