// Drives the page (web/) in headless Chromium with puppeteer-core, like a user: picks the
// audio file, sets the options, clicks a button, waits for the stems, downloads them.
//
// Usage: node tests/web/drive_page.mjs CONFIG.json   (prints a JSON report on stdout)
// CONFIG: {url, chromium, out, screenshot?, timeoutMs?, cases: [{name, audio, shifts?,
//          mode?, expectError?}]}
// Per case the report has {name, state, error, summary, stems: {name: path}, timings,
// isolated, problems, external, peakRssMB, screenshot?}; the stems are written as WAV files under out/name/.
import fs from 'node:fs';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

const BUTTONS = { all: '#separate', vocals: '#vocals-only', karaoke: '#remove-vocals' };

// Peak resident memory (VmHWM) of Chromium's renderer processes, in MB: the page and its
// workers (onnxruntime-web's threads included) live there.
function rendererPeakMB(rootPid) {
  let peak = 0;
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (!cmdline.includes('--type=renderer')) continue;
      const status = fs.readFileSync(`/proc/${entry}/status`, 'utf8');
      const ppid = Number(/PPid:\s+(\d+)/.exec(status)[1]);
      const hwm = /VmHWM:\s+(\d+) kB/.exec(status);
      if (hwm && (ppid === rootPid || descendsFrom(ppid, rootPid))) {
        peak = Math.max(peak, Number(hwm[1]) / 1024);
      }
    } catch { /* the process ended */ }
  }
  return peak;
}

function descendsFrom(pid, rootPid) {
  for (let depth = 0; pid > 1 && depth < 16; depth++) {
    if (pid === rootPid) return true;
    try {
      pid = Number(/PPid:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
    } catch { return false; }
  }
  return false;
}

// What the saved screenshot shows, measured in the page itself: its size, how many
// distinct colours, and how many pixels have the waveform colour (#3b5bdb).
async function screenshotStats(page, file) {
  const dataUrl = `data:image/png;base64,${fs.readFileSync(file).toString('base64')}`;
  return page.evaluate(async (url) => {
    const image = new Image();
    image.src = url;
    await image.decode();
    const canvas = new OffscreenCanvas(image.width, image.height);
    const context = canvas.getContext('2d');
    context.drawImage(image, 0, 0);
    const { data } = context.getImageData(0, 0, image.width, image.height);
    const colours = new Set();
    let waveform = 0;
    for (let i = 0; i < data.length; i += 4) {
      colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
      if (Math.abs(data[i] - 0x3b) < 8 && Math.abs(data[i + 1] - 0x5b) < 8
        && Math.abs(data[i + 2] - 0xdb) < 8) waveform += 1;
    }
    return { width: image.width, height: image.height, colours: colours.size, waveform };
  }, dataUrl);
}

async function runCase(browser, config, item) {
  const page = await browser.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`pageerror: ${error.message}`));
  // Requests to anything but the page's own server (the page must work offline).
  const external = [];
  const origin = new URL(config.url).origin;
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(origin) && !/^(blob|data):/.test(url)) external.push(url);
  });
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console: ${message.text()}`);
  });
  await page.setViewport({ width: 960, height: 900 });
  await page.goto(config.url, { waitUntil: 'load' });
  const isolated = await page.evaluate(() => self.crossOriginIsolated);
  await page.$eval('#shifts', (input, value) => { input.value = String(value); },
    item.shifts ?? 0);
  const chooser = await page.$('#audio-file');
  await chooser.uploadFile(item.audio);
  await page.click(BUTTONS[item.mode || 'all']);
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state),
    { timeout: config.timeoutMs || 300000, polling: 200 });
  const report = await page.evaluate(() => ({
    state: document.body.dataset.state,
    error: document.getElementById('error').hidden ? null
      : document.getElementById('error').textContent,
    summary: document.getElementById('summary').textContent,
    timings: window.demucsTimings || [],
    stemsVisible: !document.getElementById('stems').hidden,
  }));
  report.name = item.name;
  report.isolated = isolated;
  report.problems = problems;
  report.external = external;
  report.stems = {};
  if (report.state === 'done') {
    const links = await page.$$eval('a[data-stem]', (items) => items.map((a) => ({
      name: a.dataset.stem, href: a.href, download: a.download })));
    const folder = path.join(config.out, item.name);
    fs.mkdirSync(folder, { recursive: true });
    for (const link of links) {
      const base64 = await page.evaluate(async (href) => {
        const bytes = new Uint8Array(await (await fetch(href)).arrayBuffer());
        let text = '';
        for (let i = 0; i < bytes.length; i += 0x8000) {
          text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
        }
        return btoa(text);
      }, link.href);
      const file = path.join(folder, `${link.name}.wav`);
      fs.writeFileSync(file, Buffer.from(base64, 'base64'));
      report.stems[link.name] = file;
    }
    if (config.screenshot && !config.screenshotTaken) {
      await page.screenshot({ path: config.screenshot, fullPage: true });
      config.screenshotTaken = true;
      report.screenshot = await screenshotStats(page, config.screenshot);
    }
  }
  report.peakRssMB = rendererPeakMB(browser.process().pid);
  await page.close();
  return report;
}

async function main() {
  const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const browser = await puppeteer.launch({
    executablePath: config.chromium,
    headless: true,
    // waitForFunction is one protocol call: it may take as long as a separation.
    protocolTimeout: (config.timeoutMs || 300000) + 60000,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--mute-audio'],
  });
  const reports = [];
  try {
    for (const item of config.cases) {
      // A fresh page per case; the browser (and its peak memory) is shared.
      reports.push(await runCase(browser, config, item));
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(`${JSON.stringify(reports)}\n`);
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
