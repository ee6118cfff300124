// Unit tests of web/demucs-core.js against values computed by the Python core.
//
// Run by tests/test_web.py (`make web-test`), which writes the Python reference values
// to a JSON file and passes its path in DEMUCS_CORE_REFERENCE; without it the tests that
// need the reference are skipped.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';

import {
  MAX_SHIFT_SECONDS, TrackStats, checkSplitParams, convertChannels, decodeWav, encodeWav,
  onnxMetadata, planSegments, resampleFrac, segmentInput, segmentSpec, separate,
  transitionWeight,
} from '../../web/demucs-core.js';

const referencePath = process.env.DEMUCS_CORE_REFERENCE;
const ref = referencePath ? JSON.parse(fs.readFileSync(referencePath, 'utf8')) : null;
const needsRef = { skip: ref ? false : 'DEMUCS_CORE_REFERENCE not set (run tests/test_web.py)' };

function assertClose(actual, expected, tolerance, what) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let worst = 0;
  for (let i = 0; i < expected.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
  }
  assert.ok(worst <= tolerance, `${what}: max abs difference ${worst} > ${tolerance}`);
}

const toChannels = (rows) => rows.map((row) => Float32Array.from(row));

// A stand-in for the graph, the same as the Python reference's: stem s of channel c at
// input position t is input * (s + 1) * (1 + t / inputSamples).
function fakeGraph(sources, channels, inputSamples) {
  return async (input) => {
    const out = new Float32Array(sources * channels * inputSamples);
    for (let s = 0; s < sources; s++) {
      for (let c = 0; c < channels; c++) {
        for (let t = 0; t < inputSamples; t++) {
          out[(s * channels + c) * inputSamples + t] = input[c * inputSamples + t]
            * (s + 1) * (1 + t / inputSamples);
        }
      }
    }
    return out;
  };
}

test('constants have the Python values', needsRef, () => {
  assert.equal(MAX_SHIFT_SECONDS, ref.max_shift_seconds);
});

test('transitionWeight matches transition_weight', needsRef, () => {
  for (const { length, power, weight } of ref.transition_weights) {
    assertClose(transitionWeight(length, power), weight, 1e-6, `length ${length} power ${power}`);
  }
});

test('TrackStats.of matches TrackStats.of_blocks', needsRef, () => {
  for (const { channels, mean, std } of ref.stats) {
    const stats = TrackStats.of(toChannels(channels));
    assert.ok(Math.abs(stats.mean - mean) <= 1e-7 + 1e-6 * Math.abs(mean), `mean ${stats.mean} vs ${mean}`);
    assert.ok(Math.abs(stats.std - std) <= 1e-6 * std, `std ${stats.std} vs ${std}`);
  }
});

test('checkSplitParams rejects what check_split_params rejects', needsRef, () => {
  for (const { shifts, overlap, power, ok } of ref.split_params) {
    if (ok) checkSplitParams(shifts, overlap, power);
    else assert.throws(() => checkSplitParams(shifts, overlap, power), RangeError);
  }
});

test('segment plan and padded inputs match the Python core', needsRef, () => {
  const { track, mean, std, segment_samples: segment, input_samples: inputSamples, overlap,
    inputs } = ref.plan;
  const channels = toChannels(track);
  const segments = planSegments(channels[0].length, segment, overlap);
  assert.equal(segments.length, inputs.length);
  segments.forEach(({ start, length }, k) => {
    const input = segmentInput(channels, start, length, inputSamples, mean, std);
    assertClose(input, inputs[k].flat(), 1e-6, `segment ${k}`);
  });
});

test('separate matches stream_separate (fake graph)', needsRef, async () => {
  for (const item of ref.separations) {
    const track = toChannels(item.track);
    const spec = { sampleRate: item.sample_rate, sources: item.sources,
      segmentSamples: item.segment_samples, inputSamples: item.input_samples };
    const draws = [...item.draws];
    const seen = [];
    const stems = await separate(track, spec, fakeGraph(item.sources.length, track.length,
      item.input_samples), {
      shifts: item.shifts, overlap: item.overlap, transitionPower: item.transition_power,
      randint: (a, b) => { assert.deepEqual([a, b], [0, item.max_shift]); return draws.shift(); },
      progress: (done, total) => seen.push([done, total]),
    });
    assert.equal(seen.at(-1)[0], seen.at(-1)[1]);
    stems.forEach((stem, s) => stem.forEach((channel, c) => {
      assertClose(channel, item.stems[s][c], 2e-5, `shifts ${item.shifts} stem ${s} channel ${c}`);
    }));
  }
});

test('resampleFrac matches BlockResampler (julius)', needsRef, () => {
  for (const { old_sr: oldSr, new_sr: newSr, signal, resampled } of ref.resampled) {
    assertClose(resampleFrac(Float32Array.from(signal), oldSr, newSr), resampled, 3e-6,
      `${oldSr} -> ${newSr}`);
  }
});

test('convertChannels matches convert_channels', needsRef, () => {
  for (const { track, channels, converted } of ref.converted) {
    const out = convertChannels(toChannels(track), channels);
    assert.equal(out.length, converted.length);
    out.forEach((channel, c) => assertClose(channel, converted[c], 1e-7, `channel ${c}`));
  }
  assert.throws(() => convertChannels(toChannels([[0], [0]]), 3), RangeError);
});

test('onnxMetadata reads the metadata_props of an exported graph', needsRef, () => {
  const metadata = onnxMetadata(fs.readFileSync(ref.onnx.path));
  assert.deepEqual(metadata, ref.onnx.metadata);
  const spec = segmentSpec(metadata);
  assert.equal(spec.segmentSamples, Number(ref.onnx.metadata.segment_samples));
  assert.throws(() => segmentSpec({ sources: 'a' }), /lacks the metadata/);
});

test('decodeWav reads WAV files as soundfile (libsndfile) does', needsRef, () => {
  for (const { subtype, base64, sample_rate: sampleRate, channels } of ref.wavs) {
    const bytes = Buffer.from(base64, 'base64');
    const wav = decodeWav(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    assert.ok(wav, subtype);
    assert.equal(wav.sampleRate, sampleRate);
    wav.channels.forEach((channel, c) => assertClose(channel, channels[c], 0, `${subtype} ${c}`));
  }
  assert.equal(decodeWav(new TextEncoder().encode('ID3 not a wav file').buffer), null);
});

test('encodeWav writes float32 interleaved samples', () => {
  const wav = new DataView(encodeWav([Float32Array.of(1, 2), Float32Array.of(3, 4)], 8000));
  assert.equal(wav.getUint16(20, true), 3); // WAVE_FORMAT_IEEE_FLOAT
  assert.equal(wav.getUint32(24, true), 8000);
  assert.deepEqual(Array.from(new Float32Array(wav.buffer, 56)), [1, 3, 2, 4]);
});
