// Demucs separation core for JavaScript: everything around the exported ONNX graph.
//
// This module mirrors the Python core (demucs/stream.py, demucs/onnx_runtime.py) with the
// same names in camelCase, so that it can be read side by side and ported to another
// runtime (Dart, Swift, Kotlin...). It has no dependency: no DOM, no onnxruntime. The
// graph is reached through a callback, `runSegment`.
//
// Audio layout: a track is an array of channels, each a Float32Array of `length` samples
// (planar). The graph takes `mix` float32 (1, channels, inputSamples) and returns
// `stems` float32 (1, sources, channels, inputSamples), both channel-major (planar).
//
// Pipeline (same semantics as `demucs --onnx`):
//   1. convertChannels + resampleFrac: the track at the graph's channels and rate.
//   2. TrackStats.of: mean and unbiased std of the mono mix; the track is normalised,
//      (x - mean) / std, and the stems de-normalised, y * std + mean.
//   3. planSegments: segments of `segmentSamples` at offsets 0, stride, 2 stride...
//      (stride = floor((1 - overlap) * segmentSamples)), the last one shorter. Each is
//      padded to `inputSamples`, centred, with the real neighbouring samples of the
//      track (zeros past its ends); the output is centre-trimmed back.
//   4. Overlap-add with transitionWeight (a triangle to the power transitionPower),
//      divided by the summed weights.
//   5. Shifts (optional): `shifts` passes with random delays in [0, MAX_SHIFT_SECONDS],
//      averaged. A bag of models exported as one graph applies its weights inside.

/** Largest random shift of the shift trick, in seconds (Python: MAX_SHIFT_SECONDS). */
export const MAX_SHIFT_SECONDS = 0.5;
/** Default fraction of a segment shared with the next one (`demucs --overlap`). */
export const DEFAULT_OVERLAP = 0.25;
/** Default sharpness of the cross-fade (`apply_model`'s transition_power). */
export const DEFAULT_TRANSITION_POWER = 1.0;
/** Resampler defaults of julius.resample_frac (Python: sinc_resample_kernels). */
export const RESAMPLE_ZEROS = 24;
export const RESAMPLE_ROLLOFF = 0.945;
/** Metadata keys the graph must hold (written by python -m demucs.export_onnx). */
export const REQUIRED_METADATA = ['sample_rate', 'sources', 'segment_samples'];

/**
 * Throws for settings apply_model would not accept (Python: check_split_params).
 * @param {number} shifts >= 0, integer
 * @param {number} overlap in [0, 1)
 * @param {number} transitionPower >= 1
 */
export function checkSplitParams(shifts, overlap, transitionPower) {
  if (!Number.isInteger(shifts) || shifts < 0) {
    throw new RangeError(`shifts must be an integer >= 0, got ${shifts}`);
  }
  if (!(overlap >= 0 && overlap < 1)) {
    throw new RangeError(`overlap must be in [0, 1), got ${overlap}`);
  }
  if (!(transitionPower >= 1)) {
    throw new RangeError(`transition_power must be >= 1, got ${transitionPower}`);
  }
}

/**
 * Triangular blending window peaking at 1, to a power (Python: transition_weight).
 * @param {number} segmentLength samples
 * @param {number} transitionPower >= 1
 * @returns {Float32Array} (segmentLength,)
 */
export function transitionWeight(segmentLength, transitionPower) {
  const half = Math.floor(segmentLength / 2);
  const weight = new Float32Array(segmentLength);
  let max = 0;
  for (let i = 0; i < half; i++) weight[i] = i + 1;
  for (let i = half; i < segmentLength; i++) weight[i] = segmentLength - i;
  for (let i = 0; i < segmentLength; i++) max = Math.max(max, weight[i]);
  for (let i = 0; i < segmentLength; i++) weight[i] = (weight[i] / max) ** transitionPower;
  return weight;
}

/** Length and normalisation statistics of the mono mix of a track (Python: TrackStats). */
export class TrackStats {
  constructor(length = 0, mean = 0, std = 1) {
    this.length = length;
    this.mean = mean;
    this.std = std;
  }

  /**
   * Mean and unbiased std of the channel average (float32 mono mix, float64 sums), as
   * demucs.separate normalises; std is 1 for a silent/constant or non-finite mix.
   * @param {Float32Array[]} channels
   */
  static of(channels) {
    const length = channels[0].length;
    const mono = monoMix(channels);
    let sum = 0;
    for (let t = 0; t < length; t++) sum += mono[t];
    const mean = length ? sum / length : 0;
    let m2 = 0;
    for (let t = 0; t < length; t++) m2 += (mono[t] - mean) ** 2;
    let std = length > 1 ? Math.sqrt(m2 / (length - 1)) : 0;
    if (!(std > 0 && Number.isFinite(std))) std = 1;
    return new TrackStats(length, Math.fround(mean), Math.fround(std));
  }
}

function monoMix(channels) {
  if (channels.length === 1) return channels[0];
  const length = channels[0].length;
  const mono = new Float32Array(length);
  for (const channel of channels) {
    for (let t = 0; t < length; t++) mono[t] += channel[t];
  }
  for (let t = 0; t < length; t++) mono[t] /= channels.length;
  return mono;
}

/**
 * The track with `channels` channels (Python: convert_channels): averaged to mono,
 * mono repeated, or the first channels kept. Throws for upmixing other than mono.
 * @param {Float32Array[]} track
 * @param {number} channels
 * @returns {Float32Array[]}
 */
export function convertChannels(track, channels) {
  if (track.length === channels) return track;
  if (channels === 1) return [monoMix(track)];
  if (track.length === 1) return Array.from({ length: channels }, () => track[0]);
  if (track.length > channels) return track.slice(0, channels);
  throw new RangeError(`cannot convert ${track.length}-channel audio to ${channels} `
    + 'channels (only mono can be upmixed)');
}

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

/**
 * Polyphase windowed-sinc filters of julius.resample_frac (Python: sinc_resample_kernels).
 * With the rates divided by their gcd (old, new), output sample f * new + i is the dot
 * product of filter i with input samples [f * old - width, f * old + width + old).
 * @returns {{old: number, newRate: number, width: number, kernels: Float32Array[]}}
 */
export function sincResampleKernels(oldSr, newSr, zeros = RESAMPLE_ZEROS,
  rolloff = RESAMPLE_ROLLOFF) {
  const divisor = gcd(oldSr, newSr);
  const old = oldSr / divisor;
  const newRate = newSr / divisor;
  const cutoff = Math.min(old, newRate) * rolloff;
  const width = Math.ceil(zeros * old / cutoff);
  const size = 2 * width + old;
  // Each step is rounded to float32 (Math.fround), as julius computes the filters.
  const f = Math.fround;
  const kernels = [];
  for (let phase = 0; phase < newRate; phase++) {
    const kernel = new Float32Array(size);
    const shift = f(-phase / newRate);
    for (let k = 0; k < size; k++) {
      let t = f(f(shift + f((k - width) / old)) * f(cutoff));
      t = f(Math.min(Math.max(t, -zeros), zeros) * f(Math.PI));
      const window = f(f(Math.cos(f(f(t / zeros) / 2))) ** 2);
      const sinc = t === 0 ? 1 : f(f(Math.sin(t)) / t);
      kernel[k] = sinc * window;
    }
    let sum = 0;
    for (let k = 0; k < size; k++) sum = f(sum + kernel[k]);
    for (let k = 0; k < size; k++) kernel[k] /= sum;
    kernels.push(kernel);
  }
  return { old, newRate, width, kernels };
}

/**
 * One channel resampled from oldSr to newSr like julius.resample_frac (the edges are
 * extended by repeating the first and last samples); floor(n * newSr / oldSr) samples.
 * @param {Float32Array} signal
 * @returns {Float32Array}
 */
export function resampleFrac(signal, oldSr, newSr) {
  if (oldSr === newSr) return signal;
  const { old, newRate, width, kernels } = sincResampleKernels(oldSr, newSr);
  const n = signal.length;
  const outLength = Math.floor(newRate * n / old);
  const out = new Float32Array(outLength);
  const size = kernels[0].length;
  const padded = new Float32Array(n + 2 * width + old);
  padded.fill(signal[0], 0, width);
  padded.set(signal, width);
  padded.fill(signal[n - 1], width + n);
  for (let frame = 0, index = 0; index < outLength; frame++) {
    const start = frame * old;
    for (let phase = 0; phase < newRate && index < outLength; phase++, index++) {
      const kernel = kernels[phase];
      let acc = 0;
      for (let k = 0; k < size; k++) acc += kernel[k] * padded[start + k];
      out[index] = acc;
    }
  }
  return out;
}

/**
 * Segments of one pass over a track of `length` samples (Python: _Lane offsets).
 * With a shift delay d the pass separates the track delayed by d samples: segment k
 * covers track samples [k * stride - d, ...), so `start` may be negative.
 * @returns {{start: number, length: number}[]}
 */
export function planSegments(length, segmentSamples, overlap, delay = 0) {
  const stride = Math.floor((1 - overlap) * segmentSamples);
  if (segmentSamples <= 0 || stride <= 0) {
    throw new RangeError(`invalid segment (${segmentSamples} samples) or overlap (${overlap})`);
  }
  const segments = [];
  for (let offset = 0; offset < length + delay; offset += stride) {
    segments.push({ start: offset - delay,
      length: Math.min(segmentSamples, length + delay - offset) });
  }
  return segments;
}

/**
 * Graph input for one segment: `inputSamples` normalised samples centred on
 * [start, start + length), real neighbours inside the track, zeros outside.
 * @param {Float32Array[]} track raw (un-normalised) channels
 * @returns {Float32Array} planar (channels * inputSamples)
 */
export function segmentInput(track, start, length, inputSamples, mean = 0, std = 1) {
  if (length > inputSamples) {
    throw new RangeError(`a segment of ${length} samples does not fit in the graph's `
      + `${inputSamples} input samples`);
  }
  const total = track[0].length;
  const window = start - Math.floor((inputSamples - length) / 2);
  const input = new Float32Array(track.length * inputSamples);
  const begin = Math.max(window, 0);
  const end = Math.min(window + inputSamples, total);
  track.forEach((channel, c) => {
    const base = c * inputSamples - window;
    for (let t = begin; t < end; t++) input[base + t] = (channel[t] - mean) / std;
  });
  return input;
}

/** Random integer in [a, b], both included (Python: random.randint). */
export function randint(a, b) {
  return a + Math.floor(Math.random() * (b - a + 1));
}

/**
 * Separates a whole track with an exported graph (Python: OnnxSeparator.separate and
 * stream_separate with one member).
 *
 * @param {Float32Array[]} track channels at the graph's rate and channel count
 * @param {object} spec the graph's metadata: {sampleRate, sources, segmentSamples,
 *     inputSamples}
 * @param {(input: Float32Array) => Promise<Float32Array>} runSegment runs the graph on a
 *     planar (channels * inputSamples) input, returns planar
 *     (sources * channels * inputSamples) stems
 * @param {object} [options] {shifts = 0, overlap = 0.25, transitionPower = 1,
 *     normalize = true, randint, progress(done, total)}
 * @returns {Promise<Float32Array[][]>} stems[source][channel], each `length` samples
 */
export async function separate(track, spec, runSegment, options = {}) {
  const { shifts = 0, overlap = DEFAULT_OVERLAP, transitionPower = DEFAULT_TRANSITION_POWER,
    normalize = true, progress = null } = options;
  const draw = options.randint || randint;
  checkSplitParams(shifts, overlap, transitionPower);
  const channels = track.length;
  const length = track[0].length;
  if (!length) throw new RangeError('cannot separate audio with no samples');
  const sources = spec.sources.length;
  const { mean, std } = normalize ? TrackStats.of(track) : new TrackStats(length);
  const weight = transitionWeight(spec.segmentSamples, transitionPower);
  const maxShift = Math.floor(MAX_SHIFT_SECONDS * spec.sampleRate);
  const delays = shifts === 0 ? [0]
    : Array.from({ length: shifts }, () => maxShift - draw(0, maxShift));
  const passes = delays.map((delay) => planSegments(length, spec.segmentSamples, overlap,
    delay));
  const total = passes.reduce((n, segments) => n + segments.length, 0);
  const stems = Array.from({ length: sources },
    () => Array.from({ length: channels }, () => new Float32Array(length)));
  const acc = passes.length > 1 ? Array.from({ length: sources * channels },
    () => new Float32Array(length)) : null;
  const wsum = new Float32Array(length);
  let done = 0;
  for (const segments of passes) {
    const lane = acc || stems.flat();
    wsum.fill(0);
    if (acc) acc.forEach((a) => a.fill(0));
    for (const { start, length: size } of segments) {
      const input = segmentInput(track, start, size, spec.inputSamples, mean, std);
      const output = await runSegment(input);
      const trim = Math.floor((spec.inputSamples - size) / 2);
      const from = Math.max(start, 0);
      const to = Math.min(start + size, length);
      for (let k = 0; k < sources * channels; k++) {
        const target = lane[k];
        const base = k * spec.inputSamples + trim - start;
        for (let t = from; t < to; t++) target[t] += weight[t - start] * output[base + t];
      }
      for (let t = from; t < to; t++) wsum[t] += weight[t - start];
      done += 1;
      if (progress) progress(done, total);
    }
    const scale = 1 / passes.length;
    stems.flat().forEach((target, k) => {
      const source = lane[k];
      for (let t = 0; t < length; t++) {
        const value = source[t] / wsum[t];
        target[t] = acc ? target[t] + value * scale : value;
      }
    });
  }
  for (const target of stems.flat()) {
    for (let t = 0; t < length; t++) target[t] = target[t] * std + mean;
  }
  return stems;
}

/**
 * The metadata (`metadata_props`) of an ONNX file, read from its protobuf bytes
 * without a protobuf library: ModelProto field 14 holds StringStringEntryProto
 * messages (key = field 1, value = field 2). Other fields (the graph...) are skipped.
 * @param {ArrayBuffer|Uint8Array} bytes
 * @returns {Object<string, string>}
 */
export function onnxMetadata(bytes) {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const decoder = new TextDecoder();
  const readVarint = (state) => {
    let value = 0;
    let scale = 1;
    for (;;) {
      if (state.pos >= state.end) throw new RangeError('truncated ONNX file');
      const byte = data[state.pos++];
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) return value;
      scale *= 128;
    }
  };
  const fields = (pos, end, visit) => {
    const state = { pos, end };
    while (state.pos < state.end) {
      const tag = readVarint(state);
      const wire = tag % 8;
      const field = Math.floor(tag / 8);
      if (wire === 0) readVarint(state);
      else if (wire === 1) state.pos += 8;
      else if (wire === 5) state.pos += 4;
      else if (wire === 2) {
        const size = readVarint(state);
        if (state.pos + size > state.end) throw new RangeError('truncated ONNX file');
        visit(field, state.pos, state.pos + size);
        state.pos += size;
      } else throw new RangeError(`not an ONNX file (wire type ${wire})`);
    }
  };
  const metadata = {};
  fields(0, data.length, (field, start, end) => {
    if (field !== 14) return;
    const entry = {};
    fields(start, end, (key, s, e) => { entry[key] = decoder.decode(data.subarray(s, e)); });
    if (entry[1] !== undefined) metadata[entry[1]] = entry[2] ?? '';
  });
  return metadata;
}

/**
 * What the graph expects, from its metadata (Python: SegmentSpec / _read_spec).
 * @param {Object<string, string>} metadata
 */
export function segmentSpec(metadata) {
  const missing = REQUIRED_METADATA.filter((key) => !(key in metadata));
  if (missing.length) {
    throw new Error(`the ONNX file lacks the metadata ${missing.join(', ')}: export it with `
      + 'python -m demucs.export_onnx');
  }
  const segmentSamples = parseInt(metadata.segment_samples, 10);
  return {
    sampleRate: parseInt(metadata.sample_rate, 10),
    audioChannels: parseInt(metadata.audio_channels ?? '2', 10),
    sources: metadata.sources.split(','),
    segmentSamples,
    inputSamples: parseInt(metadata.input_samples ?? String(segmentSamples), 10),
    modelName: metadata.model_name ?? '?',
    precision: metadata.precision ?? 'fp32',
  };
}

/**
 * A float32 WAV file (WAVE_FORMAT_IEEE_FLOAT, interleaved) of planar channels.
 * @param {Float32Array[]} channels
 * @param {number} sampleRate
 * @returns {ArrayBuffer}
 */
export function encodeWav(channels, sampleRate) {
  const count = channels.length;
  const length = channels[0].length;
  const dataBytes = 4 * count * length;
  const buffer = new ArrayBuffer(56 + dataBytes);
  const view = new DataView(buffer);
  const text = (pos, s) => {
    for (let i = 0; i < s.length; i++) view.setUint8(pos + i, s.charCodeAt(i));
  };
  text(0, 'RIFF'); view.setUint32(4, 48 + dataBytes, true); text(8, 'WAVE');
  text(12, 'fmt '); view.setUint32(16, 16, true); view.setUint16(20, 3, true);
  view.setUint16(22, count, true); view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 4 * count, true); view.setUint16(32, 4 * count, true);
  view.setUint16(34, 32, true);
  text(36, 'fact'); view.setUint32(40, 4, true); view.setUint32(44, length, true);
  text(48, 'data'); view.setUint32(52, dataBytes, true);
  const samples = new Float32Array(buffer, 56);
  for (let c = 0; c < count; c++) {
    const channel = channels[c];
    for (let t = 0; t < length; t++) samples[t * count + c] = channel[t];
  }
  return buffer;
}

/**
 * Decodes a PCM or float WAV file (RIFF, formats 1 and 3, WAVE_FORMAT_EXTENSIBLE of
 * those) as libsndfile does (integers divided by 2^(bits - 1), so 16-bit 0x4000 is
 * exactly 0.5); null for any other file, which the browser's decoder then handles.
 * (Chromium's decoder divides 16-bit samples by 32767, not 32768: 3e-5 off.)
 * @param {ArrayBuffer} bytes
 * @returns {{sampleRate: number, channels: Float32Array[]}|null}
 */
export function decodeWav(bytes) {
  const view = new DataView(bytes);
  const tag = (pos) => (pos + 4 <= view.byteLength
    ? String.fromCharCode(...new Uint8Array(bytes, pos, 4)) : '');
  if (tag(0) !== 'RIFF' || tag(8) !== 'WAVE') return null;
  let format = null;
  for (let pos = 12; pos + 8 <= view.byteLength;) {
    const id = tag(pos);
    const size = view.getUint32(pos + 4, true);
    const body = pos + 8;
    if (id === 'fmt ' && body + 16 <= view.byteLength) {
      let code = view.getUint16(body, true);
      if (code === 0xfffe && size >= 26 && body + 26 <= view.byteLength) {
        code = view.getUint16(body + 24, true); // sub-format GUID's first two bytes
      }
      format = { code, count: view.getUint16(body + 2, true),
        sampleRate: view.getUint32(body + 4, true), bits: view.getUint16(body + 14, true) };
    } else if (id === 'data' && format) {
      const { code, count, sampleRate, bits } = format;
      const width = bits / 8;
      const known = (code === 1 && [8, 16, 24, 32].includes(bits))
        || (code === 3 && [32, 64].includes(bits));
      if (!known || !count || !sampleRate) return null;
      const frames = Math.floor(Math.min(size, view.byteLength - body) / (width * count));
      const channels = Array.from({ length: count }, () => new Float32Array(frames));
      for (let t = 0; t < frames; t++) {
        for (let c = 0; c < count; c++) {
          const at = body + (t * count + c) * width;
          let value;
          if (code === 3) value = bits === 32 ? view.getFloat32(at, true) : view.getFloat64(at, true);
          else if (bits === 8) value = (view.getUint8(at) - 128) / 128;
          else if (bits === 16) value = view.getInt16(at, true) / 32768;
          else if (bits === 24) {
            value = ((view.getInt8(at + 2) << 16) | (view.getUint8(at + 1) << 8)
              | view.getUint8(at)) / 8388608;
          } else value = view.getInt32(at, true) / 2147483648;
          channels[c][t] = value;
        }
      }
      return { sampleRate, channels };
    }
    pos = body + size + (size % 2);
  }
  return null;
}

/**
 * The sample rate a file declares in its header, for WAV (RIFF/RF64) and FLAC; null
 * for other formats. Decoding at that rate keeps the browser from resampling, so that
 * resampleFrac gives the same samples as the Python pipeline.
 * @param {ArrayBuffer} bytes
 * @returns {number|null}
 */
export function declaredSampleRate(bytes) {
  const view = new DataView(bytes);
  const tag = (pos) => (pos + 4 <= view.byteLength
    ? String.fromCharCode(...new Uint8Array(bytes, pos, 4)) : '');
  if ((tag(0) === 'RIFF' || tag(0) === 'RF64') && tag(8) === 'WAVE') {
    for (let pos = 12; pos + 8 <= view.byteLength;) {
      const size = view.getUint32(pos + 4, true);
      if (tag(pos) === 'fmt ' && pos + 16 <= view.byteLength) {
        return view.getUint32(pos + 12, true) || null;
      }
      pos += 8 + size + (size % 2);
    }
    return null;
  }
  if (tag(0) === 'fLaC' && view.byteLength >= 21) {
    // STREAMINFO: 20 bits of sample rate at byte 18 of the file.
    return ((view.getUint8(18) << 12) | (view.getUint8(19) << 4) | (view.getUint8(20) >> 4))
      || null;
  }
  return null;
}
