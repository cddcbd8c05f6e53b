// The OpenID provider Penstock's single sign-on tests log in through: oidc-provider (a
// certified OpenID Connect implementation, installed from npm by .ci/services), serving HTTPS
// with the configuration in the JSON file given as the first argument, and a new signing key
// at every start (a restart rotates the keys). Accounts (password,
// groups) are read from that file at each use, so a test changes a user's groups by rewriting
// it. The login page checks the password; consent is given for what the client asks.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import Provider from 'oidc-provider';

const path = process.argv[2];
const load = () => JSON.parse(readFileSync(path, 'utf8'));
const cfg = load();
// A new signing key at every start: restarting the provider rotates its keys.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwks = { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), use: 'sig', alg: 'RS256' }] };

const provider = new Provider(cfg.issuer, {
  clients: cfg.clients,
  jwks,
  cookies: { keys: cfg.cookie_keys },
  claims: { openid: ['sub', 'amr'], profile: ['preferred_username', 'name'], email: ['email'], groups: ['groups'] },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
  },
  pkce: { required: () => true },
  ttl: { AccessToken: 600, AuthorizationCode: 60, IdToken: 600, DeviceCode: 600, Grant: 86400, Interaction: 600, RefreshToken: 86400, Session: 3600 },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  findAccount: async (ctx, id) => {
    const a = load().accounts[id];
    if (!a) return undefined;
    return {
      accountId: id,
      claims: async () => ({ sub: id, preferred_username: id, name: id, email: `${id}@example.org`, groups: a.groups ?? [], amr: a.amr ?? ['pwd'] }),
    };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
});

const page = (uid, msg) => `<!doctype html><title>Sign in</title><p>${msg}</p>
<form method="post" action="/interaction/${uid}"><input name="login"><input name="password" type="password"><button>Sign in</button></form>`;

const readForm = (req) => new Promise((resolve, reject) => {
  let body = '';
  req.on('data', (c) => { body += c; if (body.length > 1 << 16) reject(new Error('body too large')); });
  req.on('end', () => resolve(Object.fromEntries(new URLSearchParams(body))));
  req.on('error', reject);
});

provider.use(async (ctx, next) => {
  const m = ctx.path.match(/^\/interaction\/([A-Za-z0-9_-]+)$/);
  if (!m) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  let result;
  if (details.prompt.name === 'login') {
    if (ctx.method !== 'POST') {
      ctx.type = 'html';
      ctx.body = page(m[1], 'Sign in');
      return undefined;
    }
    const form = await readForm(ctx.req);
    const a = load().accounts[form.login];
    if (!a || a.password !== form.password) {
      ctx.status = 401;
      ctx.type = 'html';
      ctx.body = page(m[1], 'Wrong user name or password');
      return undefined;
    }
    result = { login: { accountId: form.login, amr: a.amr ?? ['pwd'] } };
  } else {
    const grant = details.grantId ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    const d = details.prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    if (d.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  }
  const to = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: result.consent !== undefined });
  ctx.status = 303;
  ctx.redirect(to);
  return undefined;
});

createServer({ key: readFileSync(cfg.key_file), cert: readFileSync(cfg.cert_file) }, provider.callback())
  .listen(cfg.port, '127.0.0.1', () => console.log(`listening ${cfg.issuer}`));
