// The chat example's page in Debian's headless Chromium, driven by Playwright.
//
//   node chat.mjs live    BASE_URL ROOM   two pages join ROOM and see each other's messages
//   node chat.mjs history BASE_URL ROOM   a new page joining ROOM sees what "live" said
//
// tests/e2e/browser.rs runs "live", restarts the server on the same state, then "history".
// Exits 0 and prints "ok ..." on success; anything else is a failure with the reason on stderr.
// CHAT_SCREENSHOT_DIR=dir saves a screenshot of every page at the end.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [mode, base, room] = process.argv.slice(2);
if (!["live", "history"].includes(mode) || !base || !room) {
  console.error("usage: node chat.mjs live|history BASE_URL ROOM");
  process.exit(64);
}
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const WAIT_MS = 30_000;
// A run that hangs anyway (browser stuck) fails instead of blocking the test suite.
const deadline = setTimeout(() => {
  console.error(`chat.mjs ${mode}: no result within 120 s`);
  process.exit(3);
}, 120_000);

const profile = mkdtempSync(join(tmpdir(), "cinder-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});
context.setDefaultTimeout(WAIT_MS);

async function enter(name) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${name}] page error: ${e.message}`));
  await page.goto(base + "/");
  await page.fill("#room", room);
  await page.fill("#name", name);
  await page.click("#enter");
  await page.locator("body[data-connected=yes]").waitFor();
  // The history frame is the first thing the room sends; the marker follows it.
  await page.locator("#log li.system", { hasText: /\((history above|no messages yet)\)/ }).waitFor();
  return page;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
}

const seen = (page, who, text) =>
  page.locator("#log li.msg", { hasText: `${who}:${text}` }).waitFor();

async function messages(page) {
  return page.locator("#log li.msg").allTextContents();
}

let failed = false;
try {
  if (mode === "live") {
    const ann = await enter("ann");
    const bob = await enter("bob");
    await ann.locator("#users li", { hasText: "bob" }).waitFor();
    await say(ann, "hello from ann");
    await seen(bob, "ann", "hello from ann");
    await say(bob, "hi ann, bob here");
    await seen(ann, "bob", "hi ann, bob here");
    await seen(ann, "ann", "hello from ann");
    const a = await messages(ann);
    const b = await messages(bob);
    if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`pages disagree: ${a} vs ${b}`);
    console.log(`ok live: ${JSON.stringify(a)}`);
  } else {
    const cat = await enter("cat");
    const got = await messages(cat);
    const want = ["ann:hello from ann", "bob:hi ann, bob here"];
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      throw new Error(`history after restart: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
    }
    console.log(`ok history: ${JSON.stringify(got)}`);
  }
} catch (e) {
  failed = true;
  console.error(`chat.mjs ${mode}: ${e.stack ?? e}`);
} finally {
  if (process.env.CHAT_SCREENSHOT_DIR) {
    let i = 0;
    for (const p of context.pages().filter((p) => p.url().startsWith(base))) {
      await p.screenshot({ path: join(process.env.CHAT_SCREENSHOT_DIR, `${mode}-${i++}.png`) }).catch(() => {});
    }
  }
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  clearTimeout(deadline);
}
process.exit(failed ? 1 : 0);
