// Drives Kiln's web page in headless Chromium (Debian's chromium, via playwright-core):
// uploads an image through the file picker and prints the top-1 label the page shows and the
// live panel's rows (once it counts the upload).
//   node tests/serve/web_page_test.mjs http://127.0.0.1:8000 image.png [model]
import { chromium } from "playwright-core";

const [url, image, model] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage();
  await page.goto(url + "/", { waitUntil: "load" });
  // The model picker fills from the repository index.
  await page.waitForFunction(() => document.querySelectorAll("#model option").length > 0);
  if (model) await page.selectOption("#model", model);
  await page.setInputFiles("#file", image);
  await page.waitForFunction(() => document.querySelector("#top1").textContent.length > 0 ||
                                   document.querySelector("#error").textContent.length > 0,
                             null, { timeout: 20000 });
  const error = await page.textContent("#error");
  if (error) throw new Error("page shows an error: " + error);
  const bars = await page.locator("#bars .bar").count();
  const latency = await page.textContent("#latency");
  await page.waitForFunction(() => document.querySelectorAll("#live tr").length > 0);
  const live = await page.evaluate(() => Object.fromEntries(
      [...document.querySelectorAll("#live tr")].map((tr) => [tr.children[0].textContent,
                                                              tr.children[1].textContent])));
  console.log(JSON.stringify({ top1: await page.textContent("#top1"), bars, latency, live }));
} finally {
  await browser.close();
}
