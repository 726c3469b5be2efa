// The page: a photo or a file in, the cascade's answer out. The logic is cascade.js's; this file
// only reads the controls and draws. URL parameters: precision=float32|int8, budget=MACS or none,
// threads=auto|0|1, pin=SHA256 of manifest.json (refuse any other bundle).
import {BundleError, Cascade, fitToInput, fromRGBA, loadManifest} from './cascade.js';

const MAX_IMAGE_PIXELS = 40_000_000;  // as the Python runner (runtime/cli.py)
const params = new URLSearchParams(location.search);
const base = new URL('../', location.href);  // the bundle folder: this page lives in BUNDLE/web/
const $ = (id) => document.getElementById(id);
let cascade = null;
let lastImage = null;

function status(text, isError = false) {
  $('status').textContent = text;
  $('status').className = isError ? 'error' : '';
}

const millions = (macs) => `${(macs / 1e6).toFixed(2)}M`;

/** An image file as the model's uint8 input: decoded by the browser, converted and resized as the Python runner. */
export async function pixelsOf(blob) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {colorSpaceConversion: 'none', premultiplyAlpha: 'none'});
  } catch (error) {
    throw new BundleError(`not a readable image (${error.message})`);
  }
  if (bitmap.width * bitmap.height > MAX_IMAGE_PIXELS) {
    throw new BundleError(`${bitmap.width}x${bitmap.height} pixels, more than the ${MAX_IMAGE_PIXELS.toLocaleString()} this page reads`);
  }
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext('2d', {willReadFrequently: true});
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const [h, w, c] = cascade.shape;
  const pixels = fromRGBA(rgba, bitmap.width * bitmap.height, c);
  return fitToInput(pixels, bitmap.width, bitmap.height, c, w, h, cascade.manifest.input.resize ?? 'center_crop_bilinear').pixels;
}

/** Classifies one image file (a Blob): what the file input does, and what the tests call. */
export async function classifyBlob(blob, options = {}) {
  return cascade.classify(await pixelsOf(blob), options);
}

function drawInput(pixels) {
  const [h, w, c] = cascade.shape;
  const canvas = $('input-image');
  canvas.width = w;
  canvas.height = h;
  const image = new ImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const p = pixels.subarray(i * c, i * c + c);
    image.data.set(c >= 3 ? [p[0], p[1], p[2], c === 4 ? p[3] : 255] : [p[0], p[0], p[0], c === 2 ? p[1] : 255], 4 * i);
  }
  canvas.getContext('2d').putImageData(image, 0, 0);
}

function showResult(result) {
  $('answer').textContent = result.label;
  $('answer-detail').textContent = `exit ${result.exit} of ${cascade.numExits} · confidence ${result.confidence.toFixed(3)} · ` +
    `${millions(result.macs)} MACs of ${millions(cascade.manifest.exit_macs.at(-1))} · ${result.ms.toFixed(1)} ms`;
  const rows = cascade.manifest.exit_macs.map((macs, k) => {
    const ran = k < result.stage_ms.length;
    const threshold = cascade.thresholds[k];
    const shownThreshold = k === cascade.numExits - 1 ? 'answers' : Number.isFinite(threshold) ? threshold.toFixed(3) : 'never';
    const confidence = ran ? result.confidences[k] : null;
    const bar = ran ? `<span class="bar" style="width:${(100 * confidence).toFixed(1)}%"></span>` : '';
    return `<tr class="${k + 1 === result.exit ? 'answered' : ran ? 'ran' : 'skipped'}"><td>${k + 1}</td><td>${millions(macs)}</td>` +
      `<td class="confidence">${bar}<span>${ran ? confidence.toFixed(3) : '—'}</span></td><td>${shownThreshold}</td>` +
      `<td>${ran ? result.stage_ms[k].toFixed(2) : '—'}</td></tr>`;
  });
  $('exits').innerHTML = rows.join('');
  $('result').hidden = false;
}

async function classifyChosenFile() {
  const file = $('file').files[0];
  if (!file || !cascade) return;
  try {
    status(`classifying ${file.name}`);
    lastImage = await pixelsOf(file);
    drawInput(lastImage);
    showResult(await cascade.classify(lastImage, {all: false}));
    status('');
  } catch (error) {
    status(error.message, true);
  }
}

async function rerun() {
  if (lastImage) showResult(await cascade.classify(lastImage));
}

function budgetFromControl() {
  const value = $('budget').value;
  return value === 'none' ? null : Number(value);
}

async function openCascade(precision) {
  cascade?.close();
  cascade = null;
  cascade = await Cascade.open(base, {
    precision, pin: params.get('pin'),
    threads: {auto: 'auto', 0: false, 1: true}[params.get('threads') ?? 'auto'] ?? 'auto',
    onProgress: (text) => status(text),
  });
  cascade.setBudget(budgetFromControl());
  const build = cascade.build;
  $('runtime').textContent = `LiteRT.js ${cascade.manifest.web.litertjs ?? ''}, WebAssembly ` +
    `${build.threads ? `threaded build, ${build.numThreads} threads` : 'single-threaded build'}; ` +
    `${cascade.precision} stages checked against manifest.json (sha256)`;
}

async function main() {
  try {
    status('checking the bundle');
    const pin = params.get('pin');
    const manifest = await loadManifest(base, pin);
    $('title').textContent = `${manifest.preset ?? manifest.model_class ?? 'model'} · ${manifest.num_exits} exits`;
    const precisions = Object.keys(manifest.web.precisions);
    $('precision').innerHTML = precisions.map((p) => `<option value="${p}">${p}</option>`).join('');
    const budgets = [...manifest.thresholds].sort((a, b) => a.budget_macs - b.budget_macs);
    $('budget').innerHTML = budgets.map((e) => `<option value="${e.budget_macs}">${millions(e.budget_macs)} MACs on average` +
      (e.val_top1 != null ? ` (validation top-1 ${(100 * e.val_top1).toFixed(1)}%)` : '') + '</option>').join('') +
      '<option value="none">no early exit (last exit)</option>';
    const wanted = params.get('budget');
    if (wanted === 'none' || !budgets.length) {
      $('budget').value = 'none';
    } else if (wanted) {
      const fitting = budgets.filter((e) => e.budget_macs <= Number(wanted));
      if (!fitting.length) throw new BundleError(`budget ${wanted} MACs is below the cheapest entry of the bundle`);
      $('budget').value = String(fitting.at(-1).budget_macs);
    } else {
      $('budget').value = String(budgets[Math.floor(budgets.length / 2)].budget_macs);
    }
    const precision = params.get('precision') ?? precisions[0];
    $('precision').value = precision;
    await openCascade(precision);
    $('file').disabled = false;
    $('file').addEventListener('change', classifyChosenFile);
    $('budget').addEventListener('change', async () => { cascade.setBudget(budgetFromControl()); await rerun(); });
    $('precision').addEventListener('change', async () => {
      try {
        $('file').disabled = true;
        await openCascade($('precision').value);
        $('file').disabled = false;
        status('');
        await rerun();
      } catch (error) {
        status(error.message, true);
      }
    });
    status('ready: take a photo or choose an image');
    window.tfFusionnet = {cascade: () => cascade, classifyBlob, pixelsOf, ready: true};
  } catch (error) {
    status(error.message, true);
    window.tfFusionnet = {error: error.message, ready: true};
  }
}

main();
