// The cascade in the browser: the bundle's web stages on LiteRT.js, with the Python runner's
// rules (tf_fusionnet/runtime): the manifest checked against its digest, every stage against the
// manifest before it is compiled, the same thresholds for a budget, the same exit rule, the same
// resize (Pillow's bilinear, written out below: no browser API resizes as Pillow does).
import {loadAndCompile, loadLiteRt, supportsFeature, Tensor} from '@litertjs/core';

export class BundleError extends Error {}

// The manifest format versions this page reads, and the bundle's own files it opens.
const READABLE_FORMAT_VERSIONS = [4];
const MANIFEST = 'manifest.json';
const MANIFEST_DIGEST = 'manifest.sha256';

export async function sha256Hex(bytes) {
  if (!globalThis.crypto?.subtle) {
    throw new BundleError('this page needs Web Crypto to check the bundle, which browsers give only to ' +
      'https:// pages and http://localhost: open it through one of those (docs/export.md, "In a web page")');
  }
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function fetchBytes(url) {
  let response;
  try {
    response = await fetch(url, {cache: 'no-store'});
  } catch (error) {
    throw new BundleError(`${url}: could not be fetched (${error.message})`);
  }
  if (!response.ok) throw new BundleError(`${url}: ${response.status} ${response.statusText}`);
  return new Uint8Array(await response.arrayBuffer());
}

function fail(key, expected) {
  throw new BundleError(`${MANIFEST}: key ${JSON.stringify(key)} ${expected}`);
}

const isNumber = (v) => typeof v === 'number' && Number.isFinite(v);
// A bundle file name as the Python runner accepts it (manifest.is_bundle_name): relative, plain parts.
const isBundleName = (name) => typeof name === 'string' && name.length > 0 && !name.includes('\\') &&
  !name.includes('\0') && !name.startsWith('/') && !name.split('/')[0].includes(':') &&
  name.split('/').every((part) => part !== '' && part !== '.' && part !== '..');

/** Checks every key this page reads, naming the first missing or bad one (as validate_manifest). */
export function validateManifest(m) {
  if (m === null || typeof m !== 'object' || Array.isArray(m)) fail('(top level)', 'must be a JSON object');
  if (!READABLE_FORMAT_VERSIONS.includes(m.format_version)) {
    throw new BundleError(`${MANIFEST}: format version ${JSON.stringify(m.format_version)}, this page reads ` +
      `${READABLE_FORMAT_VERSIONS.join(', ')} (re-export the run with --web)`);
  }
  const k = m.num_exits;
  if (!Number.isInteger(k) || k < 1) fail('num_exits', 'must be an integer >= 1');
  const shape = m.input?.shape;
  if (!(Array.isArray(shape) && shape.length === 3 && shape.every((v) => Number.isInteger(v) && v > 0) &&
        shape[2] >= 1 && shape[2] <= 4)) {
    fail('input.shape', 'must be [height, width, channels] with 1 to 4 channels');
  }
  if (m.input.stage_1_reads !== 'pixels') fail('input.stage_1_reads', 'must be "pixels" for the web stages');
  if ((m.input.resize ?? 'center_crop_bilinear') !== 'center_crop_bilinear' && m.input.resize !== 'none') {
    fail('input.resize', 'must be center_crop_bilinear or none');
  }
  if (!(Array.isArray(m.exit_macs) && m.exit_macs.length === k && m.exit_macs.every((v) => isNumber(v) && v > 0))) {
    fail('exit_macs', `must be a list of ${k} positive numbers`);
  }
  if (m.class_names != null && !(Array.isArray(m.class_names) && m.class_names.every((n) => typeof n === 'string'))) {
    fail('class_names', 'must be a list of strings or null');
  }
  if (!Array.isArray(m.thresholds)) fail('thresholds', 'must be a list');
  m.thresholds.forEach((entry, i) => {
    if (!(Array.isArray(entry?.thresholds) && entry.thresholds.length === k &&
          entry.thresholds.every((v) => v === null || (isNumber(v) && v >= 0 && v <= 1)))) {
      fail(`thresholds[${i}].thresholds`, `must be ${k} numbers in [0, 1] or null`);
    }
    if (!isNumber(entry.budget_macs)) fail(`thresholds[${i}].budget_macs`, 'must be a finite number');
  });
  const web = m.web;
  if (web === null || typeof web !== 'object' || typeof web.precisions !== 'object' || web.precisions === null ||
      !Object.keys(web.precisions).length) {
    throw new BundleError(`${MANIFEST}: no web stages in this bundle (export it with --web)`);
  }
  for (const [name, entry] of Object.entries(web.precisions)) {
    if (!(Array.isArray(entry?.stages) && entry.stages.length === k && entry.stages.every(isBundleName))) {
      fail(`web.precisions.${name}.stages`, `must be a list of ${k} file names inside the bundle`);
    }
  }
  if (!(m.sha256 && typeof m.sha256 === 'object' &&
        Object.values(m.sha256).every((v) => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v)))) {
    fail('sha256', 'must map file names to sha256 hex digests');
  }
}

/**
 * The manifest of the bundle at `base` (a URL ending in /), checked against `pin` (the sha256 an
 * app shipped: catches any edit) or else the bundle's own manifest.sha256 (catches accidents).
 */
export async function loadManifest(base, pin = null) {
  const raw = await fetchBytes(new URL(MANIFEST, base));
  const digest = await sha256Hex(raw);
  if (pin) {
    if (digest !== pin.toLowerCase()) {
      throw new BundleError(`${MANIFEST}: sha256 ${digest} is not the expected ${pin.toLowerCase()} (another or a modified bundle)`);
    }
  } else {
    const recorded = new TextDecoder().decode(await fetchBytes(new URL(MANIFEST_DIGEST, base))).split(/\s+/)[0];
    if (digest !== recorded) throw new BundleError(`${MANIFEST}: does not match ${MANIFEST_DIGEST} (edited or corrupt bundle)`);
  }
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder('utf-8', {fatal: true}).decode(raw));
  } catch (error) {
    throw new BundleError(`${MANIFEST}: not JSON (${error.message})`);
  }
  validateManifest(manifest);
  return manifest;
}

/** The manifest's entry with the largest fitted budget not above `budget` (manifest.entry_for_budget). */
export function entryForBudget(manifest, budget) {
  const table = [...manifest.thresholds].sort((a, b) => a.budget_macs - b.budget_macs);
  if (!table.length) throw new BundleError('the bundle has no fitted thresholds: run without a budget');
  const fitting = table.filter((e) => e.budget_macs <= budget);
  if (!fitting.length) {
    throw new BundleError(`budget ${Math.round(budget)} MACs is below the cheapest entry of the bundle ` +
      `(${Math.round(table[0].budget_macs)} MACs)`);
  }
  return fitting[fitting.length - 1];
}

/** Per-exit thresholds: null (never) -> Infinity, the last exit always answers (-Infinity). */
export function thresholdsFor(manifest, budget) {
  const k = manifest.num_exits;
  const values = budget == null ? new Array(k).fill(Infinity)
    : entryForBudget(manifest, budget).thresholds.map((t) => (t === null ? Infinity : t));
  values[k - 1] = -Infinity;
  return values;
}

/**
 * The first top class and its softmax probability, 1 / sum(exp(z - max z)) summed in class order
 * in float64, as the Python runner computes it (confidence._top_class_and_confidence).
 */
export function topClassAndConfidence(logits) {
  let top = -Infinity;
  let index = 0;
  for (let i = 0; i < logits.length; i++) {
    if (logits[i] > top) {
      top = logits[i];
      index = i;
    }
  }
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - top);
  return [index, 1 / sum];
}

// ---- Resizing as portable.fit_to_input: the centred crop of the input's aspect ratio, then
// Pillow's BILINEAR resample (Pillow 13, libImaging/Resample.c): a triangle filter whose support
// widens by the scale when shrinking, coefficients in fixed point with 22 fraction bits, the
// horizontal pass (rounded to 8 bits) before the vertical one. A canvas's drawImage resizes
// otherwise (and differently in each browser), so the page would answer differently from the
// Python runner on the same photo.

/** (left, top, right, bottom): the largest centred box of the output's aspect ratio (portable.center_crop_box). */
export function centerCropBox(inWidth, inHeight, outWidth, outHeight) {
  if (inWidth * outHeight > inHeight * outWidth) {
    const width = Math.max(1, pyRound(inHeight * outWidth / outHeight));
    const left = Math.floor((inWidth - width) / 2);
    return [left, 0, left + width, inHeight];
  }
  const height = Math.max(1, pyRound(inWidth * outHeight / outWidth));
  const top = Math.floor((inHeight - height) / 2);
  return [0, top, inWidth, top + height];
}

// Python's round(): half to even.
function pyRound(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

const PRECISION_BITS = 32 - 8 - 2;

function resampleCoefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1.0);
  const support = 1.0 * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterScale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      const w = t < 1.0 ? 1.0 - t : 0.0;
      kk[xx * ksize + x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) if (ww !== 0.0) kk[xx * ksize + x] /= ww;
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  const fixed = new Float64Array(kk.length);  // integers, kept as doubles (exact below 2^53)
  for (let i = 0; i < kk.length; i++) {
    fixed[i] = Math.trunc(kk[i] < 0 ? -0.5 + kk[i] * (1 << PRECISION_BITS) : 0.5 + kk[i] * (1 << PRECISION_BITS));
  }
  return {ksize, bounds, fixed};
}

const clip8 = (ss) => Math.min(255, Math.max(0, Math.floor(ss / (1 << PRECISION_BITS))));

function resampleAxis(src, width, height, channels, outSize, horizontal) {
  const inSize = horizontal ? width : height;
  const {ksize, bounds, fixed} = resampleCoefficients(inSize, outSize);
  const outW = horizontal ? outSize : width;
  const outH = horizontal ? height : outSize;
  const out = new Uint8Array(outW * outH * channels);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const o = horizontal ? x : y;
      const xmin = bounds[o * 2];
      const xmax = bounds[o * 2 + 1];
      for (let c = 0; c < channels; c++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let i = 0; i < xmax; i++) {
          const pixel = horizontal ? src[(y * width + xmin + i) * channels + c] : src[((xmin + i) * width + x) * channels + c];
          ss += pixel * fixed[o * ksize + i];
        }
        out[(y * outW + x) * channels + c] = clip8(ss);
      }
    }
  }
  return out;
}

/**
 * uint8 HxWxC pixels as the model's input under the manifest's resize rule (portable.fit_to_input):
 * returns {pixels, resized}.
 */
export function fitToInput(pixels, width, height, channels, outWidth, outHeight, mode = 'center_crop_bilinear') {
  if (width === outWidth && height === outHeight) return {pixels, resized: false};
  if (mode === 'none') {
    throw new BundleError(`image is ${height}x${width}x${channels} (HxWxC), the model takes ` +
      `${outHeight}x${outWidth}x${channels} and this model does not resize`);
  }
  const [left, top, right, bottom] = centerCropBox(width, height, outWidth, outHeight);
  const cw = right - left;
  const ch = bottom - top;
  let img = new Uint8Array(cw * ch * channels);
  for (let y = 0; y < ch; y++) {
    img.set(pixels.subarray(((top + y) * width + left) * channels, ((top + y) * width + right) * channels), y * cw * channels);
  }
  let w = cw;
  let h = ch;
  if (w !== outWidth) {
    img = resampleAxis(img, w, h, channels, outWidth, true);
    w = outWidth;
  }
  if (h !== outHeight) img = resampleAxis(img, w, h, channels, outHeight, false);
  return {pixels: img, resized: true};
}

/**
 * RGBA pixels (a canvas's ImageData) as `channels` channels by the runner's mode rule: alpha
 * dropped, or kept; RGB to greyscale by ITU-R 601 luma in Pillow's fixed point.
 */
export function fromRGBA(rgba, count, channels) {
  const out = new Uint8Array(count * channels);
  for (let i = 0; i < count; i++) {
    const [r, g, b, a] = [rgba[4 * i], rgba[4 * i + 1], rgba[4 * i + 2], rgba[4 * i + 3]];
    if (channels >= 3) {
      out.set([r, g, b], i * channels);
      if (channels === 4) out[i * 4 + 3] = a;
    } else {
      out[i * channels] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
      if (channels === 2) out[i * 2 + 1] = a;
    }
  }
  return out;
}

// ---- LiteRT.js: loaded once per page.
let liteRtLoading = null;

/** Loads LiteRT.js's WebAssembly: the threaded build where the page is cross-origin isolated. */
export async function startLiteRt(threads = 'auto') {
  if (!liteRtLoading) {
    liteRtLoading = (async () => {
      const canThread = globalThis.crossOriginIsolated === true &&
        (await supportsFeature('threads')) && (await supportsFeature('relaxedSimd'));
      const useThreads = threads === 'auto' ? canThread : threads === true;
      if (useThreads && !canThread) {
        throw new BundleError('the threaded build needs a cross-origin isolated page with relaxed SIMD ' +
          '(serve the bundle with python -m tf_fusionnet.runtime.serve)');
      }
      await loadLiteRt(new URL('./litert/wasm/', import.meta.url).href, {threads: useThreads});
      return {threads: useThreads};
    })();
  }
  return liteRtLoading;
}

/**
 * A bundle's cascade in this page.
 *
 *   const cascade = await Cascade.open(new URL('../', location.href), {precision: 'int8'});
 *   cascade.setBudget(20e6);
 *   const result = await cascade.classify(pixels);  // uint8, the manifest's input shape
 */
export class Cascade {
  constructor(manifest, precision, models, build) {
    this.manifest = manifest;
    this.precision = precision;
    this.models = models;
    this.build = build;
    this.numExits = manifest.num_exits;
    this.shape = manifest.input.shape;
    this.classNames = manifest.class_names;
    this.thresholds = thresholdsFor(manifest, null);
    this.budget = null;
    // After stage k, the tensors no later stage reads are freed (the runner's _dead_after).
    const reads = manifest.stages.map((s) => s.inputs);
    this.lastReader = {};
    reads.forEach((names, k) => names.forEach((n) => { this.lastReader[n] = k; }));
  }

  /**
   * Opens the bundle at `base`: the manifest checked (against `pin` if given), every stage of
   * `precision` fetched, checked against the manifest's sha256 and compiled from those same bytes.
   */
  static async open(base, {precision = 'float32', pin = null, threads = 'auto', numThreads = null, onProgress = null} = {}) {
    const manifest = await loadManifest(base, pin);
    const entry = manifest.web.precisions[precision];
    if (!entry) {
      throw new BundleError(`precision ${precision} not in the bundle's web stages (has ${Object.keys(manifest.web.precisions).join(', ')})`);
    }
    const build = await startLiteRt(threads);
    const cpuThreads = numThreads ?? (build.threads ? Math.min(4, navigator.hardwareConcurrency || 1) : 1);
    const models = [];
    for (const [k, name] of entry.stages.entries()) {
      onProgress?.(`checking and compiling stage ${k + 1} of ${entry.stages.length}`);
      const bytes = await fetchBytes(new URL(name, base));
      if ((await sha256Hex(bytes)) !== manifest.sha256[name]) {
        models.forEach((m) => m.delete());
        throw new BundleError(`${name}: sha256 does not match the manifest (corrupt or modified bundle)`);
      }
      let model;
      try {
        model = await loadAndCompile(bytes, {accelerator: 'wasm', cpuOptions: {numThreads: cpuThreads}});
      } catch (error) {
        models.forEach((m) => m.delete());
        throw new BundleError(`${name}: LiteRT.js cannot load this stage (${error.message ?? error})`);
      }
      const inputs = model.getInputDetails().map((d) => d.name).sort();
      const listed = [...manifest.stages[k].inputs].sort();
      if (inputs.join() !== listed.join()) {
        models.forEach((m) => m.delete());
        model.delete();
        throw new BundleError(`${name}: inputs ${inputs.join(', ')}, the manifest's stages[${k}] lists ${listed.join(', ')}`);
      }
      models.push(model);
    }
    return new Cascade(manifest, precision, models, {...build, numThreads: cpuThreads});
  }

  /** The budget's thresholds (average MACs per image), or null: every image to the last exit. */
  setBudget(budget) {
    this.thresholds = thresholdsFor(this.manifest, budget);
    this.budget = budget;
  }

  /**
   * One image (uint8 pixels in the manifest's HxWxC) through the stages until an exit is
   * confident: {class, label, confidence, exit, macs, ms, stage_ms, confidences}.
   * `all: true` runs every stage (and reports every exit's confidence) but answers as the cascade.
   */
  async classify(pixels, {all = false} = {}) {
    const [h, w, c] = this.shape;
    if (pixels.length !== h * w * c) throw new BundleError(`expected ${h}x${w}x${c} pixels, got ${pixels.length} values`);
    const start = performance.now();
    const pool = {image: new Tensor(pixels, [1, h, w, c])};
    const stageMs = [];
    const confidences = [];
    let result = null;
    try {
      for (let k = 0; k < this.numExits; k++) {
        const t0 = performance.now();
        const inputs = Object.fromEntries(this.manifest.stages[k].inputs.map((n) => [n, pool[n]]));
        const outputs = await this.models[k].run(inputs);
        const logits = outputs.logits.toTypedArray();
        stageMs.push(performance.now() - t0);
        outputs.logits.delete();
        for (const [name, tensor] of Object.entries(outputs)) if (name !== 'logits') pool[name] = tensor;
        for (const [name, tensor] of Object.entries(pool)) {
          if ((this.lastReader[name] ?? -1) <= k) {
            tensor.delete();
            delete pool[name];
          }
        }
        const [answer, confidence] = topClassAndConfidence(logits);
        confidences.push(confidence);
        if (!result && (confidence >= this.thresholds[k] || k === this.numExits - 1)) {
          result = {class: answer, label: this.classNames?.[answer] ?? String(answer), confidence,
                    exit: k + 1, macs: this.manifest.exit_macs[k], ms: performance.now() - start};
          if (!all) break;
        }
      }
    } finally {
      Object.values(pool).forEach((t) => t.delete());
    }
    return {...result, stage_ms: stageMs, confidences};
  }

  close() {
    this.models.forEach((m) => m.delete());
    this.models = [];
  }
}
