// Builds app.js into a component of world `task`:
//   node build.mjs [WIT_DIR] [OUT]   (defaults: ../../../wit, app.wasm)
import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const [witPath = here("../../../wit"), out = "app.wasm"] = process.argv.slice(2);
const { component } = await componentize({
  sourcePath: here("app.js"),
  witPath,
  worldName: "task",
  // Only what taskhost provides: no wasi:http, and no clocks, random or
  // stdio beyond what the world needs.
  disableFeatures: ["http", "fetch-event", "stdio", "random", "clocks"],
});
await writeFile(out, component);
console.log(`${out}: ${component.length} bytes`);
