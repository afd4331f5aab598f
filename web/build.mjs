// Builds the two pages' scripts and styles:
//   services/replay/static/player.{js,css}     (rrweb-player; the replay service serves them)
//   services/query/static/dashboard.{js,css}   (uPlot; the query service serves them)
// `node build.mjs` writes them there; `node build.mjs --outdir=DIR` writes all four into DIR
// (the test that the committed files match a fresh build uses that).
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const outArgument = process.argv.find((argument) => argument.startsWith('--outdir='));
const outdirFor = (service) => (outArgument ? outArgument.slice('--outdir='.length) : `${here}../services/${service}/static`);

const pages = [
  { entry: 'player', service: 'replay', bundles: 'rrweb-player (MIT licence)' },
  { entry: 'dashboard', service: 'query', bundles: 'uPlot (MIT licence)' },
];

for (const page of pages) {
  await build({
    entryPoints: [`${here}src/${page.entry}.js`],
    outdir: outdirFor(page.service),
    bundle: true,
    format: 'iife',
    minify: true,
    // The pages are for the people running Sightline: current browsers with
    // DecompressionStream (which the player needs for the framed recording format).
    target: ['chrome80', 'firefox113', 'safari16.4'],
    legalComments: 'eof',
    banner: {
      js: `/* Sightline ${page.entry} page, built from web/src by web/build.mjs; bundles ${page.bundles}. */`,
      css: `/* Sightline ${page.entry} page styles, built from web/src by web/build.mjs. */`,
    },
    logLevel: 'warning',
  });
}
