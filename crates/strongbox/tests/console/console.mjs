// Drives the Strongbox console in headless Chromium, as an operator would:
//   node console.mjs URL USER PASSWORD SHOTS_DIR
// A wrong password is refused; signing in shows the deployments; a backup
// started from the page completes with live progress; a recovery to a
// moment picked on the range (with the keyboard) asks for confirmation
// naming what it overwrites and completes; a copy of the latest moment
// restored into another file, after a confirmation naming it; the drilled
// backup's last drill shows; its activity log shows; a change
// without the CSRF token is refused. Screenshots at 1280 and 390 px wide.
// Exits non-zero with the reason on the first thing that is not so.
import { chromium } from 'playwright-core';

const [url, user, password, shots, copyPath] = process.argv.slice(2);
const expect = (ok, what) => { if (!ok) throw new Error(`expected: ${what}`); };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  // The test CA is not in Chromium's store; the connection is still TLS.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const failures = [];
  page.on('pageerror', e => failures.push(e.message));
  await page.goto(`${url}/console`);

  // A wrong password: refused, still signed out.
  await page.getByLabel('User name').fill(user);
  await page.getByLabel('Password').fill('not-the-password');
  await page.getByLabel('Password').press('Enter');
  await page.getByText('wrong user name or password').waitFor();
  expect(await page.locator('#app').isHidden(), 'the console stays hidden after a wrong password');

  // Signed in with the keyboard alone.
  await page.getByLabel('User name').fill(user);
  await page.getByLabel('Password').fill(password);
  await page.getByLabel('Password').press('Enter');
  await page.locator('#deployments tbody tr[data-name=db12c]').waitFor();
  const cookie = (await context.cookies()).find(c => c.name === 'strongbox_session');
  expect(cookie && cookie.httpOnly && cookie.secure && cookie.sameSite === 'Strict',
    `an HttpOnly, Secure, SameSite=Strict session cookie: ${JSON.stringify(cookie)}`);
  expect(await page.evaluate(() => !document.cookie.includes('strongbox_session')), 'the page cannot read the cookie');
  const row = await page.locator('#deployments tbody tr[data-name=db12c]').innerText();
  expect(/sqlite/.test(row) && /UTC/.test(row) && /daily|cron|off/.test(row), `db12c's row: ${row}`);

  // A change without the CSRF token: refused, nothing queued.
  const forged = await page.evaluate(async () => {
    const r = await fetch('/paas/service/dbcs/api/v1.1/instances/usexample/db12c/backups', {
      method: 'POST', credentials: 'same-origin', body: '{}',
      headers: { 'X-ID-TENANT-NAME': 'usexample', 'Content-Type': 'application/json', 'X-Strongbox-Console': '1' },
    });
    return { status: r.status, body: await r.json() };
  });
  expect(forged.status === 403 && /CSRF/.test(forged.body.message), `403 without the token: ${JSON.stringify(forged)}`);

  // Open the deployment, start a backup, watch it complete.
  await page.getByRole('button', { name: 'db12c' }).click();
  await page.locator('#deployment').waitFor();
  // The panel shows before its backups are listed: count them once they are
  // (the test took one through the API; counting too early, under load,
  // saw none and waited for one row forever).
  await page.waitForFunction(() => document.querySelectorAll('#backups tbody tr').length > 0);
  const before = await page.locator('#backups tbody tr').count();
  // The test drilled the first backup: its row says so, what the drill
  // found on hover.
  const drilled = page.locator('#backups tbody tr', { hasText: 'OK ' });
  expect(await drilled.count() === 1, `one drilled backup: ${await page.locator('#backups tbody').innerText()}`);
  const found = await drilled.locator('td').last().getAttribute('title');
  expect(/integrity_check ok/.test(found || ''), `what the drill found: ${found}`);
  await page.getByRole('button', { name: 'Back up now' }).click();
  await page.locator('#job[data-status=Succeeded]').waitFor({ timeout: 60000 });
  expect(/backup completed/.test(await page.locator('#job .activity').innerText()), 'the backup in the activity log');
  await page.waitForFunction(n => document.querySelectorAll('#backups tbody tr').length === n + 1, before);
  await page.screenshot({ path: `${shots}/console-1280.png`, fullPage: true });

  // Pick the earliest moment on the range: focus the slider, Home.
  await page.getByRole('slider', { name: 'Moment on the recoverable range' }).focus();
  await page.keyboard.press('Home');
  const moment = await page.getByLabel('Moment (UTC)').inputValue();
  expect(await page.locator('#recover input[value=moment]').isChecked(), 'picking a moment selects "a moment"');
  await page.getByRole('button', { name: 'Recover…' }).click();
  const dialog = page.locator('#confirm');
  await dialog.waitFor();
  const warning = await dialog.innerText();
  expect(warning.includes('db12c') && warning.includes('usexample') && warning.includes(moment),
    `the confirmation names the deployment, its domain and the moment: ${warning}`);
  // Cancel first: nothing happens.
  await page.keyboard.press('Escape');
  expect(await page.locator('#job .operation').innerText() === 'backup', 'cancelled: no recovery job');
  await page.getByRole('button', { name: 'Recover…' }).click();
  await page.getByRole('button', { name: 'Overwrite db12c' }).click();
  await page.locator('#job .operation:text("recovery")').waitFor();
  await page.locator('#job[data-status=Succeeded]').waitFor({ timeout: 60000 });
  const log = await page.locator('#job .activity').innerText();
  expect(/recovery completed/.test(log), `the recovery's activity log: ${log}`);
  console.log(`RECOVERED TO ${moment}`);

  // A copy of the latest moment (the console's backup) into another file:
  // the deployment, just recovered to the earliest, is not changed (the
  // test compares both).
  await page.getByRole('slider', { name: 'Moment on the recoverable range' }).focus();
  await page.keyboard.press('End');
  const latest = await page.getByLabel('Moment (UTC)').inputValue();
  await page.getByLabel('A copy, leaving the deployment as it is').check();
  await page.getByLabel('Where to restore the copy').fill(copyPath);
  await page.getByRole('button', { name: 'Recover…' }).click();
  const copyWarning = await dialog.innerText();
  expect(copyWarning.includes(copyPath) && copyWarning.includes('not changed') && copyWarning.includes(latest),
    `the confirmation names the copy's place and the moment: ${copyWarning}`);
  const recoveryJob = await page.locator('#job .id').innerText();
  await page.getByRole('button', { name: 'Restore the copy' }).click();
  // The panel follows the new job (the last one succeeded too).
  await page.waitForFunction(id => document.querySelector('#job .id').textContent !== id, recoveryJob);
  await page.locator('#job[data-status=Succeeded]').waitFor({ timeout: 60000 });
  console.log(`COPIED ${latest} TO ${copyPath}`);

  // Readable on a phone.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  const wide = await page.evaluate(() => [...document.querySelectorAll('body *')]
    .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth && !e.closest('.scroll'))
    .map(e => `${e.tagName}#${e.id}.${e.className}:${Math.round(e.getBoundingClientRect().right)}`).slice(0, 8).join(' '));
  expect(overflow <= 0, `no sideways scrolling of the page at 390 px (${overflow} px too wide: ${wide})`);
  await page.screenshot({ path: `${shots}/console-390.png`, fullPage: true });

  // Signing out ends the session: the API no longer takes the cookie.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('User name').waitFor();
  const after = await page.evaluate(async () => (await fetch('/paas/service/dbcs/api/v1.1/instances/usexample', {
    credentials: 'same-origin', headers: { 'X-ID-TENANT-NAME': 'usexample', 'X-Strongbox-Console': '1' } })).status);
  expect(after === 401, `401 after signing out, got ${after}`);
  expect(failures.length === 0, `no script errors: ${failures}`);
  console.log('CONSOLE OK');
} finally {
  await browser.close();
}
