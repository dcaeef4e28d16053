// Builds dist/hourglass.mjs (ESM) and dist/hourglass.js (IIFE: a global
// `Hourglass` for a plain <script> tag), minified, and records their sizes in
// dist/sizes.json.
import { build } from "esbuild";
import { readFileSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const common = {
  entryPoints: ["src/index.ts"],
  bundle: true,
  minify: true,
  target: "es2020",
  platform: "browser",
  legalComments: "none",
  logLevel: "warning",
};

await build({ ...common, format: "esm", outfile: "dist/hourglass.mjs" });
await build({ ...common, format: "iife", globalName: "Hourglass", outfile: "dist/hourglass.js" });

const sizes = {};
for (const file of ["dist/hourglass.mjs", "dist/hourglass.js"]) {
  const bytes = readFileSync(file);
  sizes[file] = { minified: bytes.length, gzipped: gzipSync(bytes, { level: 9 }).length };
  console.log(`${file}: ${sizes[file].minified} B minified, ${sizes[file].gzipped} B gzipped`);
}
writeFileSync("dist/sizes.json", JSON.stringify(sizes, null, 2) + "\n");
