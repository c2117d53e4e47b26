// Drives keyplane's console in Debian's Chromium, as people use it: signs
// in through the real OpenID provider with MFA, issues a key and reads its
// secret once, revokes it and times the gate's refusal, tries a forged
// form, a viewer's crafted form and an expired session, and takes a
// screenshot of every page. Run by tests/api/console.rs, which starts
// keyplane, the provider and a gate, and reads what this prints.
//
// Environment: KEYPLANE (origin), GATE (the gate's base URL), INSTANCE (an
// instance id), OUT (where screenshots go), CHROMIUM (the browser).
// Prints one JSON line per finding; exits non-zero on the first failure.
// The test keyplane runs on a manual clock: the line {"advance": N} asks the
// test to move it N seconds, and waits for "ok" on standard input.

import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const { KEYPLANE, GATE, INSTANCE, OUT, CHROMIUM } = process.env;
const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();

const say = (what) => console.log(JSON.stringify(what));
function check(condition, what) {
  if (!condition) throw new Error(`failed: ${what}`);
  say({ passed: what });
}

/// Every console message of level error, page error and CSP violation on
/// keyplane's pages (the provider's are not ours); the refusals this script
/// provokes on purpose (a page answered 403) are not problems.
const problems = [];
const provoked = /the server responded with a status of 403/;
function watch(page) {
  const ours = () => page.url().startsWith(KEYPLANE);
  page.on("console", (message) => {
    if (ours() && message.type() === "error" && !provoked.test(message.text())) {
      problems.push(`${page.url()}: ${message.text()}`);
    }
  });
  page.on("pageerror", (error) => {
    if (ours()) problems.push(`${page.url()}: ${error.message}`);
  });
}

async function shot(page, name) {
  await page.screenshot({ path: `${OUT}/${name}.png`, fullPage: true });
  say({ screenshot: `${name}.png`, url: page.url() });
}

/// Signs in at the provider as someone in `group` with a one-time code (MFA).
async function signIn(browser, who, group) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  watch(page);
  await page.goto(`${KEYPLANE}/console/`);
  check(new URL(page.url()).pathname === "/console/sign-in", `${who}: sent to sign in`);
  if (who === "olga") await shot(page, "01-sign-in");
  await page.getByRole("link", { name: "Sign in with your identity provider" }).click();
  await page.waitForURL(/\/interaction\//);
  await page.fill('input[name="sub"]', who);
  await page.fill('input[name="email"]', `${who}@example.com`);
  await page.fill('input[name="groups"]', group);
  await page.fill('input[name="amr"]', "pwd,otp");
  await Promise.all([
    page.waitForURL((url) => url.pathname === "/console/" && url.origin === KEYPLANE),
    page.getByRole("button", { name: "Sign in" }).click(),
  ]);
  await page.waitForSelector("h1:text('Overview')");
  check(await page.isVisible(`text=${who}@example.com`), `${who}: signed in`);
  return { context, page };
}

/// Whether the gate takes `secret` now.
async function gateAccepts(secret) {
  const response = await fetch(`${GATE}/v1/models`, {
    headers: { authorization: `Bearer ${secret}` },
  });
  return response.status;
}

/// Submits a form to `action` built in the page, as another page's script
/// would (with whatever fields are given), and answers the response status.
async function submitForm(page, action, fields) {
  const [response] = await Promise.all([
    page.waitForNavigation(),
    page.evaluate(
      ({ action, fields }) => {
        const form = document.createElement("form");
        form.method = "post";
        form.action = action;
        for (const [name, value] of Object.entries(fields)) {
          const input = document.createElement("input");
          input.type = "hidden";
          input.name = name;
          input.value = value;
          form.append(input);
        }
        document.body.append(form);
        form.submit();
      },
      { action, fields },
    ),
  ]);
  return response.status();
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  // An operator signs in with MFA and looks around.
  const { context, page } = await signIn(browser, "olga", "keyplane-ops");
  await shot(page, "02-overview");
  await page.getByRole("link", { name: "Instances" }).click();
  await shot(page, "03-instances");
  await page.getByRole("link", { name: "jan-browser" }).click();
  check(new URL(page.url()).pathname === `/console/instances/${INSTANCE}`, "the instance's page");
  await shot(page, "04-instance");

  // Issue a key: the secret once, with a copy button.
  await page.fill("#key-name", "laptop");
  await page.getByLabel("inference:chat").check();
  await page.getByLabel("models:read").check();
  await page.getByRole("button", { name: "Issue key" }).click();
  await page.waitForSelector("text=you will not see it again");
  const secret = await page.inputValue("#secret");
  check(/^kpi_[0-9A-Za-z]{38}$/.test(secret), "the secret is shown");
  check(await page.isVisible("button:text('Copy')"), "with a copy button");
  await shot(page, "05-key-issued");
  check((await gateAccepts(secret)) === 200, "the gate takes the new key");

  // A reload shows the instance's page, the key masked only.
  await page.reload();
  check(new URL(page.url()).pathname === `/console/instances/${INSTANCE}`, "a reload is the instance's page");
  const html = await page.content();
  check(!html.includes(secret), "the secret is gone after a reload");
  check(html.includes(`kpi_…${secret.slice(-4)}`), "the key is shown masked");

  // Revoke it: a confirmation, then the gate refuses it within a second.
  await page.getByRole("link", { name: "Revoke laptop" }).click();
  await page.waitForSelector("h1:text('Revoke laptop?')");
  await shot(page, "06-confirm-revoke");
  await page.fill("#reason", "lost laptop");
  await page.getByRole("button", { name: "Revoke" }).click();
  await page.waitForURL(`${KEYPLANE}/console/instances/${INSTANCE}`);
  const revoked = Date.now();
  let status = 200;
  while (status === 200 && Date.now() - revoked < 5000) {
    status = await gateAccepts(secret);
    if (status === 200) await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const took = Date.now() - revoked;
  say({ revoked_refused_after_ms: took, status });
  check(status === 401 && took <= 1000, `the gate refuses the revoked key within 1 s (${took} ms)`);
  check(await page.isVisible("td >> text=revoked"), "the page shows it revoked");
  await shot(page, "07-key-revoked");

  // A forged form (no CSRF token) changes nothing.
  const forged = await submitForm(page, `/console/instances/${INSTANCE}/keys`, {
    name: "forged",
    scopes: "inference:chat",
  });
  check(forged === 403, "a form without the CSRF token is refused");
  check(await page.isVisible("text=did not come from this console"), "and says why");
  await shot(page, "08-forged-form");

  // Every section an operator may read, from the navigation.
  await page.goto(`${KEYPLANE}/console/`);
  const sections = await page.locator("header nav a").evaluateAll((links) =>
    links.map((link) => [link.textContent.trim(), link.getAttribute("href")]),
  );
  check(sections.length >= 6, `the navigation lists what an operator reads (${sections.length})`);
  for (const [index, [label, href]] of sections.entries()) {
    await page.goto(`${KEYPLANE}${href}`);
    check(await page.isVisible("h1"), `${label} renders`);
    await shot(page, `09-${index}-${label.toLowerCase().replace(/ /g, "-")}`);
  }
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${KEYPLANE}/console/instances/${INSTANCE}`);
  await shot(page, "11-instance-phone");

  // A viewer: no buttons that write, and a crafted form is refused anyway.
  const viewer = await signIn(browser, "vic", "keyplane-viewers");
  await viewer.page.goto(`${KEYPLANE}/console/instances/${INSTANCE}`);
  const buttons = await viewer.page.locator("main button, main a.button").count();
  check(buttons === 0, "a viewer sees no button that changes anything");
  await shot(viewer.page, "12-viewer");
  const csrf = await viewer.page.inputValue('header input[name="csrf"]');
  const crafted = await submitForm(viewer.page, `/console/instances/${INSTANCE}/keys`, {
    csrf,
    name: "by-a-viewer",
    scopes: "inference:chat",
  });
  check(crafted === 403, "a viewer's crafted form is refused with 403");

  // An admin sees the admin pages too, and previews a role change.
  const admin = await signIn(browser, "ada", "keyplane-admins");
  for (const [href, name] of [
    ["/console/admin-keys", "13-admin-keys"],
    ["/console/webhooks", "14-webhooks"],
  ]) {
    await admin.page.goto(`${KEYPLANE}${href}`);
    check(await admin.page.isVisible("form.card"), `an admin may add on ${href}`);
    await shot(admin.page, name);
  }
  await admin.page.goto(`${KEYPLANE}/console/roles/inference-client`);
  await admin.page.getByLabel("models:write").check();
  await admin.page.getByRole("button", { name: "Preview the change" }).click();
  await admin.page.waitForSelector("text=What saving would change");
  await shot(admin.page, "15-role-preview");
  await admin.context.close();

  // An expired session: back to sign-in (the clock moves past the idle limit).
  say({ advance: 31 * 60 });
  const answer = await lines.next();
  check(answer.value === "ok", "the clock moved");
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.goto(`${KEYPLANE}/console/instances/${INSTANCE}`);
  check(new URL(page.url()).pathname === "/console/sign-in", "an expired session is sent to sign in");
  await context.close();
  await viewer.context.close();

  check(problems.length === 0, `no console errors or CSP violations (${problems.join(" | ")})`);
  say({ done: true });
} catch (error) {
  say({ error: String(error.stack || error), problems });
  process.exitCode = 1;
} finally {
  await browser.close();
  input.close();
}
