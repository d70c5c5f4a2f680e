// A full component in JavaScript, built with componentize-js (see
// docs/other-languages.md): `run` upper-cases its input and logs through
// the host's `log` interface; an empty input is a permanent task error.
import { log } from "taskhost:plugin/log@0.1.1";

export function run(input) {
  if (input.length === 0) {
    // `task-error` is a variant: the thrown value is its JavaScript form.
    throw { tag: "permanent", val: "empty input" };
  }
  log("info", `upper-casing ${input.length} bytes`);
  console.error("written to stderr");
  return new TextEncoder().encode(new TextDecoder().decode(input).toUpperCase());
}
