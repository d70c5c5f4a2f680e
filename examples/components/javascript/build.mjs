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
  // taskhost provides no wasi:http (a manifest grants sockets instead):
  // leave out what would import it.
  disableFeatures: ["http", "fetch-event"],
});
await writeFile(out, component);
console.log(`${out}: ${component.length} bytes`);
