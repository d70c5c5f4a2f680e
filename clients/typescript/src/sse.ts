/**
 * Server-Sent Events read from a `fetch` response body: a parser that
 * follows the WHATWG event-stream format, and {@link EventStream}, the
 * closable async iterable that the streaming methods return.
 *
 * @module
 */

import { settle, type Call, type Transport } from "./http.js";
import { follow } from "./signals.js";

/** One dispatched event, before its data is decoded. */
export interface SseMessage {
  /** The `event` field (`message` when absent). */
  event: string;
  /** The `data` lines, joined with `\n`. */
  data: string;
  /** The last `id` field seen so far in the stream, if any. */
  lastEventId: string | undefined;
}

/**
 * Parses an event stream from its chunks. Comments (`: keep-alive`) and
 * events without data are dropped; a last event without its blank line is
 * incomplete and dropped too, as the format says.
 */
export async function* parseSse(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<SseMessage> {
  const decoder = new TextDecoder();
  // Its own (stateful) expression: generators of other streams run between its yields.
  const lineEnd = /\r\n|\r|\n/g;
  let buffer = "";
  let first = true;
  let event = "";
  let data: string[] = [];
  let lastEventId: string | undefined;
  for await (const chunk of chunks) {
    buffer += decoder.decode(chunk, { stream: true });
    if (first && buffer.length > 0) {
      if (buffer.startsWith("\uFEFF")) buffer = buffer.slice(1);
      first = false;
    }
    let start = 0;
    lineEnd.lastIndex = 0;
    for (let end = lineEnd.exec(buffer); end; end = lineEnd.exec(buffer)) {
      // A chunk that ends in `\r` may continue with `\n`: wait for the next one.
      if (end[0] === "\r" && end.index === buffer.length - 1) break;
      const line = buffer.slice(start, end.index);
      start = end.index + end[0].length;
      if (line === "") {
        if (data.length > 0) yield { event: event || "message", data: data.join("\n"), lastEventId };
        event = "";
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "id" && !value.includes("\0")) lastEventId = value;
    }
    buffer = buffer.slice(start);
  }
}

/** The chunks of a response body, released when the consumer stops early. */
async function* chunksOf(body: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  const reader = body.getReader();
  try {
    for (let read = await reader.read(); !read.done; read = await reader.read()) yield read.value;
  } finally {
    reader.releaseLock();
  }
}

/**
 * A stream of events from the server, read as it arrives:
 * `for await (const event of stream) { ... }`. Iterate it once. It ends
 * when the server ends it (a followed task ended, the server stops, a
 * subscriber fell behind) or when you call {@link EventStream.close}, or
 * `break` out of the loop. An abort of the signal it was opened with
 * rejects the loop with the signal's reason.
 */
export class EventStream<T> implements AsyncIterable<T> {
  readonly #source: StreamSource;
  readonly #decode: (message: SseMessage) => T | undefined;
  #closed = false;
  #lastEventId: string | undefined;

  /**
   * @param source The open response and what controls it.
   * @param decode Turns a message into an event; `undefined` skips it (a kind this client does not know).
   */
  constructor(source: StreamSource, decode: (message: SseMessage) => T | undefined) {
    this.#source = source;
    this.#decode = decode;
  }

  /** The id of the last event received (`RUN-SEQ` for task events): resume after it with `events({after})`. */
  get lastEventId(): string | undefined {
    return this.#lastEventId;
  }

  /** Stops reading and closes the connection; an iteration in progress ends without error. */
  close(): void {
    this.#closed = true;
    this.#source.release();
    this.#source.controller.abort();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    const { url, response, controller } = this.#source;
    try {
      if (!response.body) return;
      const messages = parseSse(chunksOf(response.body));
      for (;;) {
        let next: IteratorResult<SseMessage>;
        try {
          next = await settle(url, controller.signal, messages.next());
        } catch (error) {
          if (this.#closed) return;
          throw error;
        }
        if (next.done) return;
        this.#lastEventId = next.value.lastEventId;
        const event = this.#decode(next.value);
        if (event !== undefined) yield event;
      }
    } finally {
      this.close();
    }
  }
}

/** An open event-stream response and what controls it. */
export interface StreamSource {
  /** The URL it was opened from (for errors). */
  url: string;
  /** The answer whose body is the stream. */
  response: Response;
  /** Aborts the request; {@link EventStream.close} uses it. */
  controller: AbortController;
  /** Stops following the caller's signal, once the stream is done. */
  release: () => void;
}

/**
 * Opens `GET route` as an event stream. A refusal throws as any request
 * does; `call.signal` aborts the stream for as long as it is open.
 */
export async function openStream<T>(
  transport: Transport,
  route: string,
  call: Call,
  decode: (message: SseMessage) => T | undefined,
): Promise<EventStream<T>> {
  const controller = new AbortController();
  const release = follow(call.signal, controller);
  try {
    const headers = { accept: "text/event-stream", ...call.headers };
    const response = await transport.send("GET", route, { ...call, headers, signal: controller.signal });
    return new EventStream({ url: response.url, response, controller, release }, decode);
  } catch (error) {
    release();
    throw error;
  }
}
