// The page: picks a model and an audio file, decodes the audio with Web Audio, hands it
// to worker.js and shows the stems (waveform, player, WAV download).
//
// State for scripts and tests: document.body.dataset.state is 'idle', 'running', 'done'
// or 'error'; the stems are the download links (a[data-stem]) once it is 'done'.
import {
  declaredSampleRate, decodeWav, encodeWav, onnxMetadata, segmentSpec,
} from './demucs-core.js';

// Rates OfflineAudioContext accepts (Web Audio spec: at least 3 kHz to 768 kHz).
const MIN_CONTEXT_RATE = 3000;
const MAX_CONTEXT_RATE = 768000;
const WAVEFORM_WIDTH = 800;
const WAVEFORM_HEIGHT = 64;
// Waveforms are drawn relative to the loudest stem shown, at most this much magnified.
const MIN_WAVEFORM_PEAK = 1e-3;

const $ = (id) => document.getElementById(id);
const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
let audioFile = null;
let model = null; // {key, spec}: the last model read
let workerModelKey = null; // model the worker holds a session for
let blobUrls = [];

function setState(state) {
  document.body.dataset.state = state;
  const busy = state === 'running';
  for (const button of document.querySelectorAll('button[data-mode]')) {
    button.disabled = busy || !audioFile;
  }
}

function showError(message) {
  $('error').textContent = message;
  $('error').hidden = false;
  $('progress-card').hidden = true;
  setState('error');
}

function chooseAudio(file) {
  audioFile = file || null;
  $('audio-name').textContent = file ? `${file.name} (${(file.size / 1e6).toFixed(1)} MB)`
    : 'No file chosen';
  setState(document.body.dataset.state === 'running' ? 'running' : 'idle');
}

function modelKey() {
  const file = $('model-file').files[0];
  return file ? `file:${file.name}:${file.size}:${file.lastModified}`
    : `url:${new URL($('model-url').value.trim(), document.baseURI).href}`;
}

// The model's spec (cached) and, when `needBytes`, its bytes (read again: the page does
// not keep them, the worker holds the session).
async function readModel(needBytes) {
  const key = modelKey();
  if (model && model.key === key && !needBytes) return { key, spec: model.spec, bytes: null };
  const file = $('model-file').files[0];
  const name = file ? file.name : $('model-url').value.trim();
  let bytes;
  if (file) {
    bytes = await file.arrayBuffer();
  } else {
    const response = await fetch(name).catch(() => null);
    if (!response || !response.ok) {
      throw new Error(`Cannot load the model ${name}: `
        + `${response ? `HTTP ${response.status}` : 'network error'}`);
    }
    bytes = await response.arrayBuffer();
  }
  let spec;
  try {
    spec = segmentSpec(onnxMetadata(bytes));
  } catch (error) {
    throw new Error(`Cannot use the model ${name}: ${error.message}`);
  }
  model = { key, spec };
  return { key, spec, bytes };
}

async function decode(file, modelRate) {
  const bytes = await file.arrayBuffer();
  // PCM/float WAV: read exactly (as libsndfile does); anything else: Web Audio.
  const wav = decodeWav(bytes);
  if (wav) {
    if (!wav.channels[0].length) throw new Error(`${file.name} contains no audio samples.`);
    return wav;
  }
  const declared = declaredSampleRate(bytes);
  const rate = declared >= MIN_CONTEXT_RATE && declared <= MAX_CONTEXT_RATE ? declared
    : modelRate;
  // At the file's own rate the browser decodes without resampling; other formats are
  // resampled to the model's rate by the browser.
  const context = new OfflineAudioContext(1, 1, rate);
  let buffer;
  try {
    buffer = await context.decodeAudioData(bytes);
  } catch {
    throw new Error(`Cannot decode ${file.name}: not a supported audio format, or the file `
      + 'is corrupt or truncated.');
  }
  if (!buffer.length) throw new Error(`${file.name} contains no audio samples.`);
  const channels = Array.from({ length: buffer.numberOfChannels },
    (_, c) => buffer.getChannelData(c).slice());
  return { channels, sampleRate: buffer.sampleRate };
}

function formatSeconds(seconds) {
  if (!Number.isFinite(seconds)) return '…';
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

// Min/max per pixel column, `scale` times the samples (so that quiet stems show).
function drawWaveform(canvas, channels, scale) {
  const context = canvas.getContext('2d');
  const { width, height } = canvas;
  const length = channels[0].length;
  context.fillStyle = '#eef1f7';
  context.fillRect(0, 0, width, height);
  context.fillStyle = '#3b5bdb';
  const step = Math.max(1, Math.floor(length / width));
  for (let x = 0; x < width; x++) {
    let low = 0;
    let high = 0;
    const start = Math.floor(x * length / width);
    for (let t = start; t < Math.min(start + step, length); t++) {
      for (const channel of channels) {
        low = Math.min(low, channel[t] * scale);
        high = Math.max(high, channel[t] * scale);
      }
    }
    const top = (1 - Math.min(high, 1)) * height / 2;
    const bottom = (1 - Math.max(low, -1)) * height / 2;
    context.fillRect(x, top, 1, Math.max(1, bottom - top));
  }
}

function sumOf(stemList) {
  const sum = stemList[0].map((channel) => new Float32Array(channel));
  for (const stem of stemList.slice(1)) {
    stem.forEach((channel, c) => { for (let t = 0; t < channel.length; t++) sum[c][t] += channel[t]; });
  }
  return sum;
}

// Stems to show for a mode: all, vocals only, or everything but the vocals.
function selectStems(sources, stems, mode) {
  const all = sources.map((name, i) => ({ name, channels: stems[i] }));
  if (mode === 'all' || !sources.includes('vocals')) return all;
  if (mode === 'vocals') return all.filter((stem) => stem.name === 'vocals');
  const ready = all.find((stem) => stem.name === 'no_vocals');
  if (ready) return [ready];
  const others = all.filter((stem) => stem.name !== 'vocals');
  return [{ name: 'no_vocals', channels: sumOf(others.map((stem) => stem.channels)) }];
}

function showStems(result, mode, baseName) {
  for (const url of blobUrls) URL.revokeObjectURL(url);
  blobUrls = [];
  const list = $('stem-list');
  list.replaceChildren();
  const shown = selectStems(result.spec.sources, result.stems, mode);
  let peak = 0;
  for (const { channels } of shown) {
    for (const channel of channels) for (const value of channel) peak = Math.max(peak, Math.abs(value));
  }
  const scale = 1 / Math.max(peak, MIN_WAVEFORM_PEAK);
  for (const { name, channels } of shown) {
    const item = document.createElement('div');
    item.className = 'stem card';
    const title = document.createElement('h3');
    title.textContent = name;
    const canvas = document.createElement('canvas');
    canvas.width = WAVEFORM_WIDTH;
    canvas.height = WAVEFORM_HEIGHT;
    drawWaveform(canvas, channels, scale);
    const url = URL.createObjectURL(new Blob([encodeWav(channels, result.sampleRate)],
      { type: 'audio/wav' }));
    blobUrls.push(url);
    const audio = document.createElement('audio');
    audio.controls = true;
    audio.preload = 'none';
    audio.src = url;
    const link = document.createElement('a');
    link.href = url;
    link.download = `${baseName}-${name}.wav`;
    link.dataset.stem = name;
    link.textContent = `Download ${name}.wav`;
    item.append(title, canvas, audio, link);
    list.append(item);
  }
  const spec = result.spec;
  $('summary').textContent = `${spec.modelName} (${spec.precision}), ${result.backend}`
    + `${result.backend === 'wasm' ? ` with ${result.threads} thread(s)` : ''}: `
    + `${result.segments} segments in ${result.seconds.toFixed(1)} s. `
    + 'Stems are float32 WAV at the model\'s rate.';
  $('stems').hidden = false;
}

function runWorker(message, transfer) {
  return new Promise((resolve, reject) => {
    worker.onmessage = ({ data }) => {
      if (data.type === 'status') {
        $('progress-text').textContent = data.text;
      } else if (data.type === 'progress') {
        window.demucsTimings.push(data.seconds);
        const left = data.seconds / data.done * (data.total - data.done);
        $('progress').value = data.done / data.total;
        $('progress-text').textContent = `Segment ${data.done} / ${data.total} · about `
          + `${formatSeconds(left)} left`;
        $('progress').dataset.total = data.total;
      } else if (data.type === 'done') {
        resolve(data);
      } else if (data.type === 'error') {
        reject(new Error(data.message));
      }
    };
    worker.onerror = (event) => reject(new Error(event.message || 'the worker failed'));
    worker.postMessage(message, transfer);
  });
}

async function start(mode) {
  if (!audioFile) return;
  setState('running');
  $('error').hidden = true;
  $('stems').hidden = true;
  $('progress-card').hidden = false;
  $('progress').value = 0;
  // Seconds since the start of the separation after each segment (for scripts).
  window.demucsTimings = [];
  $('progress-text').textContent = 'Reading the model…';
  try {
    const backend = $('backend').value;
    const session = `${modelKey()}|${backend}`;
    const { spec, bytes } = await readModel(workerModelKey !== session);
    $('progress-text').textContent = `Decoding ${audioFile.name}…`;
    const audio = await decode(audioFile, spec.sampleRate);
    // The model's bytes go to the worker once (transferred, not copied); it keeps the
    // session for the next tracks.
    const shifts = parseInt($('shifts').value, 10);
    const overlap = parseFloat($('overlap').value);
    const result = await runWorker({
      type: 'separate', model: bytes, channels: audio.channels,
      sampleRate: audio.sampleRate, backend, shifts, overlap,
    }, [...(bytes ? [bytes] : []), ...audio.channels.map((c) => c.buffer)]);
    workerModelKey = session;
    result.segments = parseInt($('progress').dataset.total || '0', 10);
    $('progress-card').hidden = true;
    showStems(result, mode, audioFile.name.replace(/\.[^.]*$/, ''));
    setState('done');
  } catch (error) {
    workerModelKey = null;
    model = null;
    showError(error.message);
  }
}

function init() {
  $('audio-file').addEventListener('change', (event) => chooseAudio(event.target.files[0]));
  const drop = $('drop');
  drop.addEventListener('dragover', (event) => { event.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    chooseAudio(event.dataTransfer.files[0]);
  });
  for (const button of document.querySelectorAll('button[data-mode]')) {
    button.addEventListener('click', () => start(button.dataset.mode));
  }
  const params = new URLSearchParams(location.search);
  if (params.get('model')) $('model-url').value = params.get('model');
  if (!navigator.gpu) $('backend').querySelector('[value=webgpu]').disabled = true;
  $('environment').textContent = `Cross-origin isolated: ${self.crossOriginIsolated ? 'yes'
    : 'no (one WASM thread; serve with COOP/COEP headers for threads)'} · `
    + `${navigator.hardwareConcurrency || '?'} cores · WebGPU: ${navigator.gpu ? 'yes' : 'no'}`;
  setState('idle');
}

init();
