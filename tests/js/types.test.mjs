// streamer.d.ts: it compiles under strict TypeScript, a page's use of the
// module type-checks against it, and it declares every message and key that
// docs/protocol.md documents.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { TIMEOUT } from "./support.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, "..", "..");
const declarations = readFileSync(join(ROOT, "static", "streamer.d.ts"), "utf8");
const protocol = readFileSync(join(ROOT, "docs", "protocol.md"), "utf8");

test("the declarations and a page's use of them pass tsc --strict", async () => {
  const tsc = join(HERE, "node_modules", ".bin", "tsc");
  // Compiling takes a few seconds on a slow machine, more than one wait.
  await promisify(execFile)(tsc, ["-p", join(HERE, "types", "tsconfig.json")], {
    timeout: 6 * TIMEOUT,
  });
});

test("every event type of the protocol has a declared message type", () => {
  const documented = [...protocol.matchAll(/^#### `(job\.[a-z_]+)`$/gm)].map(
    (m) => m[1],
  );
  assert.equal(documented.length, 14, "the protocol's fourteen event types");
  for (const type of [
    ...documented,
    "snapshot",
    "resumed",
    "pong",
    "error",
    "closed",
  ]) {
    assert.match(declarations, new RegExp(`"${type.replace(".", "\\.")}"`), type);
  }
});

test("every key of the protocol's job, memory and document tables is declared", () => {
  const keys = new Set();
  for (const anchor of [
    "### The job object",
    "`memory_status`, and the",
    "A document, in",
  ]) {
    const after = protocol.slice(protocol.indexOf(anchor));
    const table = after.slice(after.indexOf("\n| key |")).split("\n\n")[0];
    for (const row of table.split("\n").slice(3)) {
      const cell = row.split("|")[1];
      for (const key of cell.matchAll(/`([a-z_]+)`/g)) keys.add(key[1]);
    }
  }
  assert.ok(keys.size >= 30, [...keys].join(", "));
  for (const key of keys) assert.match(declarations, new RegExp(`\\b${key}\\??:`), key);
});
