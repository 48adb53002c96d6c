// Copies the browser builds of the UI's npm dependencies into the gateway's static folder.
// The copies are committed, so installing the Python package needs no Node and no network.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "services", "gateway", "static", "vendor");
const files = {
  "cytoscape.min.js": "cytoscape/dist/cytoscape.min.js",
  "cytoscape-dagre.min.js": "cytoscape-dagre/dist/cytoscape-dagre.min.js",
};
mkdirSync(out, { recursive: true });
const manifest = {};
for (const [name, source] of Object.entries(files)) {
  copyFileSync(join(here, "node_modules", source), join(out, name));
  const pkg = JSON.parse(readFileSync(join(here, "node_modules", source.split("/")[0], "package.json")));
  manifest[name] = { package: pkg.name, version: pkg.version, license: pkg.license };
}
writeFileSync(join(out, "VERSIONS.json"), JSON.stringify(manifest, null, 2) + "\n");
console.log(`vendored ${Object.keys(files).length} files into ${out}`);
