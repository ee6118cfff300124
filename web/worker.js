// Web Worker: loads the exported graph in onnxruntime-web and separates a decoded track
// with demucs-core.js, so that the page stays responsive. One segment runs at a time.
//
// Messages in:  {type: 'separate', model: ArrayBuffer (null: keep the last session),
//                channels: Float32Array[] at sampleRate, backend: 'wasm'|'webgpu',
//                shifts, overlap}
// Messages out: {type: 'status', text}
//               {type: 'progress', done, total, seconds}     (after each segment)
//               {type: 'done', spec, stems: Float32Array[][] (source, channel),
//                sampleRate, seconds, backend, threads}
//               {type: 'error', message}
import * as ort from './ort/ort.min.mjs';
import {
  convertChannels, onnxMetadata, resampleFrac, segmentSpec, separate,
} from './demucs-core.js';

// Absolute URL: onnxruntime-web resolves its .wasm/.mjs files from here (served from the
// local install, not a CDN).
ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
// Threads need cross-origin isolation (COOP/COEP headers); otherwise one thread.
ort.env.wasm.numThreads = self.crossOriginIsolated
  ? Math.min(navigator.hardwareConcurrency || 1, 16) : 1;

let cached = null; // {session, spec}: the last model, kept for the next tracks

// A session on `model` (bytes), or the cached one when `model` is null.
async function openModel(model, backend) {
  if (!model) {
    if (!cached) throw new Error('no model loaded');
    return cached;
  }
  if (cached) await cached.session.release();
  cached = null;
  const spec = segmentSpec(onnxMetadata(model));
  const session = await ort.InferenceSession.create(new Uint8Array(model), {
    executionProviders: [backend],
    graphOptimizationLevel: 'extended',
    enableMemPattern: false,
  });
  cached = { session, spec };
  return cached;
}

self.onmessage = async ({ data }) => {
  if (data.type !== 'separate') return;
  try {
    self.postMessage({ type: 'status', text: 'Loading the model…' });
    const backend = data.backend === 'webgpu' && self.navigator.gpu ? 'webgpu' : 'wasm';
    if (data.backend === 'webgpu' && backend !== 'webgpu') {
      throw new Error('WebGPU is not available in this browser: choose WASM');
    }
    const { session, spec } = await openModel(data.model, backend);
    self.postMessage({ type: 'status', text: `Resampling to ${spec.sampleRate} Hz…` });
    const track = convertChannels(data.channels, spec.audioChannels)
      .map((channel) => resampleFrac(channel, data.sampleRate, spec.sampleRate));
    const [inputName] = session.inputNames;
    const [outputName] = session.outputNames;
    const channels = spec.audioChannels;
    const runSegment = async (input) => {
      const feeds = { [inputName]: new ort.Tensor('float32', input,
        [1, channels, spec.inputSamples]) };
      const result = await session.run(feeds);
      const output = result[outputName];
      const values = output.location === 'cpu' ? output.data : await output.getData(true);
      for (const name of Object.keys(result)) if (name !== outputName) result[name].dispose();
      return values;
    };
    const started = performance.now();
    const stems = await separate(track, spec, runSegment, {
      shifts: data.shifts, overlap: data.overlap,
      progress: (done, total) => self.postMessage({
        type: 'progress', done, total, seconds: (performance.now() - started) / 1000,
      }),
    });
    const seconds = (performance.now() - started) / 1000;
    self.postMessage({ type: 'done', spec, stems, sampleRate: spec.sampleRate, seconds,
      backend, threads: ort.env.wasm.numThreads },
    stems.flat().map((channel) => channel.buffer));
  } catch (error) {
    self.postMessage({ type: 'error', message: String(error && error.message || error) });
  }
};
