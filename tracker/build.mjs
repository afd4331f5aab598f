// Builds services/ingest/static/tracker.js, the file ingest serves at /tracker.js.
// `node build.mjs` writes it; `node build.mjs --outfile=PATH` writes elsewhere (the test that
// the committed bundle matches a fresh build uses that).
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const outArgument = process.argv.find((argument) => argument.startsWith('--outfile='));
const outfile = outArgument ? outArgument.slice('--outfile='.length) : `${here}../services/ingest/static/tracker.js`;

await build({
  entryPoints: [`${here}src/index.js`],
  outfile,
  bundle: true,
  format: 'iife',
  minify: true,
  // Browsers with CompressionStream and crypto.getRandomValues; older ones get no tracker
  // features they cannot run rather than a transpiled copy twice the size.
  target: ['chrome80', 'firefox113', 'safari16.4'],
  legalComments: 'eof',
  banner: { js: '/* Sightline tracker, built from tracker/src by tracker/build.mjs; bundles @rrweb/record (MIT licence). */' },
  logLevel: 'warning',
});
