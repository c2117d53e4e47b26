// A real, certified OpenID provider (npm `oidc-provider`) for keyplane's
// sign-in tests.
//
//   node provider.mjs   with OIDC_KEY (a PEM P-256 private key, made ahead:
//   keys generated at start can hang on Node 20), OIDC_CLIENT_ID,
//   OIDC_CLIENT_SECRET, OIDC_REDIRECT_URI.
//
// Listens on 127.0.0.1, on a port of its own, and prints one line of JSON
// with its issuer once it is ready. Its sign-in page is a form the test posts:
// the subject, email, groups, `amr`, `acr` and how long ago the person
// authenticated (`auth_age`, seconds) are the test's to choose per sign-in,
// and `mischief` makes the token endpoint hand keyplane a bad ID token
// (tampered, alg none, HS256 keyed with the public key, expired, for another
// audience, with another nonce or issuer), as a hostile network or provider would.
import { createHmac, createPrivateKey, createPublicKey, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
};

const pem = readFileSync(env('OIDC_KEY'), 'utf8');
const privateKey = createPrivateKey(pem);
const publicPem = createPublicKey(privateKey).export({ format: 'pem', type: 'spki' });
const kid = 'test-signing-key';
const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' };

// What each subject chose at its last sign-in.
const people = new Map();

const b64 = (value) => Buffer.from(value).toString('base64url');
const json64 = (value) => b64(JSON.stringify(value));

function es256(header, payload) {
  const input = `${json64(header)}.${json64(payload)}`;
  const signature = sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' });
  return `${input}.${b64(signature)}`;
}

// The ID token as mischief would have it.
function mangle(idToken, mischief) {
  const [h, p, s] = idToken.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  const payload = JSON.parse(Buffer.from(p, 'base64url'));
  const now = Math.floor(Date.now() / 1000);
  switch (mischief) {
    case 'tampered':
      return `${h}.${json64({ ...payload, groups: ['keyplane-admins'], sub: `${payload.sub}-admin` })}.${s}`;
    case 'alg_none':
      return `${json64({ alg: 'none', typ: 'JWT' })}.${p}.`;
    case 'hs256': {
      const input = `${json64({ alg: 'HS256', typ: 'JWT', kid })}.${p}`;
      return `${input}.${b64(createHmac('sha256', publicPem).update(input).digest())}`;
    }
    case 'expired':
      return es256(header, { ...payload, iat: now - 7200, exp: now - 3600 });
    case 'audience':
      return es256(header, { ...payload, aud: 'someone-else', azp: 'someone-else' });
    case 'nonce':
      return es256(header, { ...payload, nonce: 'not-the-sign-ins-nonce' });
    case 'issuer':
      return es256(header, { ...payload, iss: 'https://impostor.example' });
    default:
      return idToken;
  }
}

const server = http.createServer((req, res) => handler(req, res));
let handler = (_req, res) => { res.statusCode = 503; res.end(); };

server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: env('OIDC_CLIENT_ID'),
      client_secret: env('OIDC_CLIENT_SECRET'),
      redirect_uris: [env('OIDC_REDIRECT_URI')],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      id_token_signed_response_alg: 'ES256',
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: [jwk] },
    claims: {
      openid: ['sub', 'amr', 'acr'], email: ['email', 'email_verified'], groups: ['groups'], profile: ['name'],
    },
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    cookies: { keys: ['keyplane-tests-only'] },
    async findAccount(_ctx, sub) {
      const person = people.get(sub) ?? {};
      return {
        accountId: sub,
        async claims() {
          return { sub, email: person.email, email_verified: true, groups: person.groups ?? [], name: sub };
        },
      };
    },
    renderError(ctx, out) {
      ctx.type = 'json';
      ctx.body = out;
    },
  });
  provider.proxy = false;

  // The token endpoint's answer, with the mischief its subject chose.
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === '/token' && ctx.body && typeof ctx.body.id_token === 'string') {
      const payload = JSON.parse(Buffer.from(ctx.body.id_token.split('.')[1], 'base64url'));
      if (process.env.OIDC_DEBUG) process.stderr.write(`id_token ${JSON.stringify(payload)}\n`);
      const mischief = people.get(payload.sub)?.mischief;
      if (mischief) ctx.body = { ...ctx.body, id_token: mangle(ctx.body.id_token, mischief) };
    }
  });

  const callback = provider.callback();
  handler = async (req, res) => {
    const match = /^\/interaction\/([^/?]+)/.exec(req.url);
    if (!match) return callback(req, res);
    try {
      const details = await provider.interactionDetails(req, res);
      if (details.prompt.name === 'consent') {
        const grant = details.grantId
          ? await provider.Grant.find(details.grantId)
          : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
        grant.addOIDCScope(details.params.scope);
        const grantId = await grant.save();
        return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
      }
      if (req.method === 'GET') {
        res.setHeader('content-type', 'text/html; charset=utf-8');
        return res.end(`<!doctype html><form method="post" action="/interaction/${details.uid}">
<input name="sub"><input name="email"><input name="groups"><input name="amr" value="pwd,otp">
<input name="acr"><input name="auth_age" value="0"><input name="mischief"><button>Sign in</button></form>`);
      }
      const form = new URLSearchParams(await new Promise((resolve) => {
        let body = '';
        req.on('data', (chunk) => { body += chunk; });
        req.on('end', () => resolve(body));
      }));
      const list = (name) => (form.get(name) ?? '').split(',').map((v) => v.trim()).filter(Boolean);
      const sub = form.get('sub');
      people.set(sub, { email: form.get('email') || undefined, groups: list('groups'), mischief: form.get('mischief') || undefined });
      const ts = Math.floor(Date.now() / 1000) - Number(form.get('auth_age') || 0);
      const login = { accountId: sub, amr: list('amr'), ts, remember: false };
      if (form.get('acr')) login.acr = form.get('acr');
      return provider.interactionFinished(req, res, { login }, { mergeWithLastSubmission: false });
    } catch (err) {
      res.statusCode = 400;
      res.end(String(err));
    }
  };
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
