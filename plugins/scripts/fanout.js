// A fan-out/join through host.queue: count the words of a long text in
// parallel tasks, then merge the counts. One script plays all three parts,
// told apart by its input; register it once:
//
//   taskhost plugins add plugins/scripts/fanout.js
//   echo '{"text": "...", "chunk": 200}' | taskhost submit fanout --wait   # prints the merge task's id
//
// 1. {"text", "chunk"?}: splits the text into chunks of `chunk` lines,
//    submits one child per chunk ({"count": lines}) and a join of them
//    ({"merge": true}); returns the join's id.
// 2. {"count": [lines]}: counts the words of its lines.
// 3. {"merge": true}: sums its joined children's counts; the top 10 words.
//
// Children are created when the submitting task completes, in the same
// transaction: a retried attempt never duplicates them.

const WORD = /[\p{L}\p{N}']+/gu;

export default function (input) {
  const request = input.json();
  const self = host.task().plugin;
  if (typeof request.text === "string") {
    const lines = request.text.split("\n");
    const size = request.chunk ?? 100;
    const ids = [];
    for (let at = 0; at < lines.length; at += size) {
      ids.push(host.queue.submit({ plugin: self, input: { count: lines.slice(at, at + size) } }));
    }
    host.log("info", `${lines.length} lines in ${ids.length} chunks`);
    return host.queue.join(ids, { plugin: self, input: { merge: true } });
  }
  if (Array.isArray(request.count)) {
    const counts = {};
    for (const line of request.count) {
      for (const [word] of line.toLowerCase().matchAll(WORD)) counts[word] = (counts[word] ?? 0) + 1;
    }
    return counts;
  }
  if (request.merge) {
    const total = new Map();
    for (const part of host.queue.joined()) {
      if (part.status !== "completed") throw new host.PermanentError(`chunk ${part.id} ${part.status}: ${part.error}`);
      for (const [word, n] of Object.entries(part.output.json())) total.set(word, (total.get(word) ?? 0) + n);
    }
    const top = [...total].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, 10);
    return { words: [...total.values()].reduce((a, b) => a + b, 0), unique: total.size, top };
  }
  throw new host.PermanentError("input must have text, count or merge");
}
