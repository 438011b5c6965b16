// Drives the viewer page in headless Chromium (Debian's /usr/bin/chromium) with playwright-core:
//   node viewer/test/viewer.mjs <server URL> <access key> <secret> <stream> [screenshot.png]
// Prints one JSON line with what a user would see; exits non-zero with the reason when a step fails.
import fs from 'node:fs';
import { chromium } from 'playwright-core';

const [url, key, secret, stream, screenshot] = process.argv.slice(2);
const result = { pageErrors: [] };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required',
  ],
});
try {
  const context = await browser.newContext({ acceptDownloads: true });
  const page = await context.newPage();
  page.on('pageerror', (e) => result.pageErrors.push(String(e)));
  await page.goto(url);
  await page.fill('#key', key);
  await page.fill('#secret', secret);
  await page.click('#creds button');
  await page.click(`#streams li[data-stream="${stream}"]`, { timeout: 10000 });
  await page.waitForFunction(() => Number(document.getElementById('fragments-summary').dataset.count) >= 3);
  result.fragmentsListed = Number(await page.getAttribute('#fragments-summary', 'data-count'));
  result.timelineBars = await page.locator('#timeline .fragment').count();
  result.details = await page.locator('#details').innerText();

  const playback = async (button, mode) => {
    await page.click(button);
    await page.waitForFunction((m) => {
      const v = document.getElementById('video');
      return v.dataset.mode === m && v.currentTime > 2;
    }, mode, { timeout: 30000 });
    return page.evaluate(() => {
      const v = document.getElementById('video');
      return {
        currentTime: v.currentTime, duration: v.duration, mediaError: v.error ? v.error.code : null,
        pageError: document.getElementById('error').textContent, width: v.videoWidth,
      };
    });
  };
  result.live = await playback('#live', 'LIVE');
  result.onDemand = await playback('#ondemand', 'ON_DEMAND');

  await page.click('#images');
  await page.waitForFunction(() => [...document.querySelectorAll('#thumbs img')].some((i) => i.naturalWidth > 0));
  result.thumbnails = await page.evaluate(() => [...document.querySelectorAll('#thumbs img')]
    .map((i) => [i.naturalWidth, i.naturalHeight]));

  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#clip')]);
  result.clip = { name: download.suggestedFilename(), bytes: fs.statSync(await download.path()).size };
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify(result));
} catch (e) {
  console.error(`viewer test failed: ${e.message}\n${JSON.stringify(result)}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
