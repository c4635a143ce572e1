// The browser half of docs/check-math.sh, which says how to run it:
//
//     node docs/check-math.mjs DOC_DIR NODE_MODULES SCREENSHOT_DIR
//
// Serves DOC_DIR (the output of `cargo doc`, built with the local header) and KaTeX from
// NODE_MODULES on 127.0.0.1, opens in Chromium every page of the crate that has math and the
// pages in SCREENSHOTS, and fails unless each math code span and ```math block became exactly
// one KaTeX node, without a KaTeX error, a warning, or a request that failed or left the
// machine. Writes a screenshot of each page in SCREENSHOTS to SCREENSHOT_DIR.
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, readdirSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import path from "node:path";

const CRATE = "ndarray_optim";
// Pages with math to screenshot: file name, and page under the crate's directory.
const SCREENSHOTS = [
    ["index", "index.html"],
    ["adam", "rules/struct.Adam.html"],
    ["clip", "enum.Clip.html"],
    ["schedule", "schedule/enum.Schedule.html"],
    ["plateau", "schedule/struct.ReduceLrOnPlateau.html"],
];
const CDN = "https://cdn.jsdelivr.net/npm/";
const WIDTH = 1100;
// A page taller than this is cut off in its screenshot (the checks cover the whole page).
const MAX_SCREENSHOT_HEIGHT = 6000;

const args = process.argv.slice(2).map((arg) => path.resolve(arg));
const [docDir, nodeModules, screenshotDir] = args;
if (!screenshotDir) {
    console.error("usage: node docs/check-math.mjs DOC_DIR NODE_MODULES SCREENSHOT_DIR");
    process.exit(2);
}
const katexDir = path.join(nodeModules, "katex");
const version = JSON.parse(readFileSync(path.join(katexDir, "package.json"), "utf8")).version;
const problems = [];

// The committed header's integrity hashes must be those of the files the CDN serves, which
// are the npm package's: a wrong hash makes browsers refuse KaTeX on docs.rs.
const header = readFileSync(new URL("../katex-header.html", import.meta.url), "utf8");
const pinned = [...header.matchAll(/(?:href|src)="([^"]+)" integrity="([^"]+)"/g)];
if (pinned.length !== 2) {
    problems.push(`katex-header.html: ${pinned.length} resources with an integrity hash, not 2`);
}
for (const [, url, integrity] of pinned) {
    const prefix = `${CDN}katex@${version}/`;
    if (!url.startsWith(prefix)) {
        problems.push(`katex-header.html: ${url} is not under ${prefix}`);
        continue;
    }
    const file = readFileSync(path.join(katexDir, url.slice(prefix.length)));
    const actual = "sha384-" + createHash("sha384").update(file).digest("base64");
    if (actual !== integrity) {
        problems.push(`katex-header.html: ${url} has integrity ${actual}, not ${integrity}`);
    }
}

// The header's local copy loads KaTeX from /npm/katex@VERSION/, as from the CDN.
const TYPES = {
    ".css": "text/css",
    ".html": "text/html",
    ".js": "text/javascript",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ttf": "font/ttf",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
};
function fileFor(urlPath) {
    const katexPrefix = `/npm/katex@${version}/`;
    const [root, rest] = urlPath.startsWith(katexPrefix)
        ? [katexDir, urlPath.slice(katexPrefix.length)]
        : [docDir, urlPath.slice(1)];
    const file = path.resolve(root, decodeURIComponent(rest));
    return file.startsWith(root + path.sep) ? file : null;
}
const server = createServer((request, response) => {
    const file = fileFor(new URL(request.url, "http://localhost").pathname);
    let body;
    try {
        body = file && readFileSync(file);
    } catch {
        body = null;
    }
    if (!body) {
        response.writeHead(404).end();
        return;
    }
    const type = TYPES[path.extname(file)] ?? "application/octet-stream";
    response.writeHead(200, { "Content-Type": type }).end(body);
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

// Math as rustdoc writes it, found in the HTML independently of the header's own selectors:
// an inline code span `$…$` (not inside a <pre>), and a ```math block. Only in the body: the
// header in <head> names the markup it looks for.
function expectedMath(page) {
    const html = page.slice(page.indexOf("<body"));
    const codes = [...html.matchAll(/(<pre[^>]*>)?<code>\$[^<]+\$<\/code>/g)];
    const spans = codes.filter((match) => !match[1]);
    const blocks = html.match(/<pre class="language-math">/g) ?? [];
    return spans.length + blocks.length;
}
// Math still in the old `$…$` form in running text, which Markdown mangles: such a page is
// checked too, so that the browser reports it.
function looseMath(page) {
    const text = page
        .slice(page.indexOf("<body"))
        .replace(/<(pre|code|script)[^>]*>[^]*?<\/\1>/g, "")
        .replace(/<[^>]*>/g, "");
    return /\$[^$\n]+\$/.test(text);
}
function pagesOf(dir) {
    return readdirSync(dir).flatMap((name) => {
        const file = path.join(dir, name);
        if (statSync(file).isDirectory()) {
            return pagesOf(file);
        }
        return name.endsWith(".html") ? [file] : [];
    });
}
const crateDir = path.join(docDir, CRATE);
const shot = new Map(SCREENSHOTS.map(([name, page]) => [path.join(crateDir, page), name]));
const pages = pagesOf(crateDir)
    .map((file) => {
        const html = readFileSync(file, "utf8");
        return { file, expected: expectedMath(html), loose: looseMath(html) };
    })
    .filter(({ file, expected, loose }) => expected > 0 || loose || shot.has(file));
for (const file of shot.keys()) {
    if (!pages.some((page) => page.file === file)) {
        problems.push(`${path.relative(docDir, file)}: no such page`);
    }
}

// require() as if from a file in NODE_MODULES, so that it finds the packages installed there.
const require = createRequire(path.join(nodeModules, "noop.js"));
const { chromium } = require("playwright-core");
const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ],
});
const context = await browser.newContext({ viewport: { width: WIDTH, height: 900 } });
mkdirSync(screenshotDir, { recursive: true });

for (const { file, expected } of pages) {
    const name = path.relative(docDir, file);
    const found = [];
    const page = await context.newPage();
    // Nothing may come from anywhere but the local server: the CDN is not reachable here.
    await page.route("**/*", (route) => {
        const url = route.request().url();
        if (url.startsWith(origin + "/")) {
            return route.continue();
        }
        found.push(`requested ${url}`);
        return route.abort();
    });
    // KaTeX warns on the console (input it renders, but not as LaTeX would); rustdoc's own
    // warnings (about font preloads) are not this check's business.
    page.on("console", (message) => {
        const text = message.text();
        const katex = /KaTeX|LaTeX|character metrics/.test(text);
        if (message.type() === "error" || (message.type() === "warning" && katex)) {
            found.push(`console ${message.type()}: ${text}`);
        }
    });
    page.on("pageerror", (error) => found.push(`script error: ${error.message}`));
    page.on("response", (response) => {
        if (response.status() >= 400) {
            found.push(`HTTP ${response.status()} for ${response.url()}`);
        }
    });
    await page.goto(`${origin}/${name}`, { waitUntil: "load" });
    await page.evaluate(() => document.fonts.ready);
    const result = await page.evaluate(() => {
        const rawSpans = [...document.querySelectorAll("code")]
            .filter((code) => !code.closest("pre") && /^\$[^]+\$$/.test(code.textContent))
            .map((code) => code.textContent);
        // Math still in the old `$…$` form in running text, which Markdown mangles.
        const loose = [...document.querySelectorAll(".docblock, .docblock-short")].flatMap(
            (block) => {
                const copy = block.cloneNode(true);
                copy.querySelectorAll("code, pre, .katex").forEach((node) => node.remove());
                return copy.textContent.match(/\$[^$\n]+\$/g) ?? [];
            },
        );
        const katex = [...document.querySelectorAll(".katex")];
        // The screenshot reaches down to the last formula, and at least past the description.
        const shown = [...katex, ...document.querySelectorAll("details.top-doc")];
        const bottom = Math.max(0, ...shown.map((node) => node.getBoundingClientRect().bottom));
        return {
            rendered: katex.length,
            errors: [...document.querySelectorAll(".katex-error")].map((e) => e.title),
            // A command KaTeX does not know does not make the formula an error: it is set
            // inline in KaTeX's error colour (the default errorColor, #cc0000).
            unknown: [...document.querySelectorAll(".katex-html *")]
                .filter((node) => node.style.color === "rgb(204, 0, 0)")
                .filter((node) => node.parentElement.style.color !== "rgb(204, 0, 0)")
                .map((node) => node.textContent),
            rawSpans,
            rawBlocks: document.querySelectorAll("pre.language-math").length,
            loose,
            bottom: bottom + window.scrollY,
        };
    });
    for (const error of result.errors) {
        found.push(`KaTeX error: ${error}`);
    }
    for (const command of result.unknown) {
        found.push(`KaTeX does not know ${command}`);
    }
    for (const span of result.rawSpans) {
        found.push(`math code span not rendered: ${span}`);
    }
    if (result.rawBlocks > 0) {
        found.push(`${result.rawBlocks} math blocks not rendered`);
    }
    for (const text of result.loose) {
        found.push(`math outside a code span (write it as \`${text}\`): ${text}`);
    }
    if (expected === 0 && shot.has(file)) {
        found.push("no math code span or ```math block, on a page listed as having math");
    } else if (result.rendered !== expected) {
        found.push(`${result.rendered} KaTeX nodes for ${expected} formulas`);
    }
    if (shot.has(file)) {
        const fullHeight = await page.evaluate(() => document.documentElement.scrollHeight);
        const height = Math.min(fullHeight, result.bottom + 60, MAX_SCREENSHOT_HEIGHT);
        const clip = { x: 0, y: 0, width: WIDTH, height };
        const out = path.join(screenshotDir, `${shot.get(file)}.png`);
        await page.screenshot({ path: out, clip, fullPage: true });
    }
    await page.close();
    const verdict = found.length ? "FAIL" : "ok  ";
    console.log(`${verdict} ${name}: ${result.rendered} of ${expected} formulas rendered`);
    problems.push(...found.map((problem) => `${name}: ${problem}`));
}
await browser.close();
server.close();

for (const problem of problems) {
    console.error(problem);
}
console.log(`${pages.length} pages, ${problems.length} problems`);
process.exit(problems.length ? 1 : 0);
