// A tiny OpenID provider for drimbox's relying-party interoperability tests, built on
// oidc-provider (panva's OpenID Certified implementation). Loopback only, in-memory, one
// confidential client; the keys are generated at start and live as long as the process.
//
// Configuration (environment):
//   OIDC_PORT            port to listen on, on 127.0.0.1 (required)
//   OIDC_ISSUER          issuer, default http://127.0.0.1:$OIDC_PORT
//   OIDC_CLIENT_ID       default drimbox
//   OIDC_CLIENT_SECRET   default secret
//   OIDC_REDIRECT_URI    the client's only redirect URI (required)
//   OIDC_ID_TOKEN_ALG    RS256 (default), PS256 or ES256: how the client's ID tokens are signed
//   OIDC_ACR             the acr the login interaction asserts, default eidas1 ("" for none)
//
// The login is a plain interaction instead of the devInteractions (which cannot assert an
// acr): GET /interaction/:uid shows a form, POST /interaction/:uid/login with login=<sub>
// logs that subject in with OIDC_ACR, POST /interaction/:uid/confirm grants the requested
// scopes and claims, POST /interaction/:uid/abort denies (error=access_denied). Prints
// "listening <issuer>" on stdout once ready; stops on SIGTERM or SIGINT.

import { generateKeyPairSync, randomBytes } from 'node:crypto';

import Provider from 'oidc-provider';

const port = Number.parseInt(process.env.OIDC_PORT ?? '', 10);
const redirectUri = process.env.OIDC_REDIRECT_URI;
if (!Number.isInteger(port) || !redirectUri) {
  console.error('server.mjs: OIDC_PORT and OIDC_REDIRECT_URI are required');
  process.exit(2);
}
const issuer = process.env.OIDC_ISSUER ?? `http://127.0.0.1:${port}`;
const clientId = process.env.OIDC_CLIENT_ID ?? 'drimbox';
const clientSecret = process.env.OIDC_CLIENT_SECRET ?? 'secret';
const idTokenAlg = process.env.OIDC_ID_TOKEN_ALG ?? 'RS256';
const acr = process.env.OIDC_ACR ?? 'eidas1';

function signingKey(kid, type, options, extra) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', ...extra };
}

const keys = [
  signingKey('rsa-1', 'rsa', { modulusLength: 2048 }, {}),
  signingKey('ec-1', 'ec', { namedCurve: 'P-256' }, { alg: 'ES256' }),
];

const profile = { given_name: 'KIT', family_name: 'DOC', SubjectNameID: null };

const configuration = {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: [redirectUri],
      response_types: ['code'],
      grant_types: ['authorization_code', 'refresh_token'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: idTokenAlg,
    },
  ],
  jwks: { keys },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  acrValues: acr ? [acr] : [],
  scopes: ['openid', 'offline_access', 'scope_all'],
  claims: {
    openid: ['sub'],
    scope_all: ['given_name', 'family_name', 'SubjectNameID'],
  },
  pkce: { required: () => true },
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  features: {
    devInteractions: { enabled: false },
    userinfo: { enabled: true },
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, ...profile, SubjectNameID: sub };
      },
    };
  },
  renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
};

const provider = new Provider(issuer, configuration);

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function interaction(ctx, uid, action) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.uid !== uid) ctx.throw(400, 'interaction mismatch');
  const { prompt, params, session } = details;
  if (action === undefined && ctx.method === 'GET') {
    const form = prompt.name === 'login'
      ? `<form method="post" action="/interaction/${uid}/login">
           <input name="login" autofocus><button>Sign in</button></form>`
      : `<form method="post" action="/interaction/${uid}/confirm">
           <p>${escapeHtml(params.client_id)} asks for ${escapeHtml(params.scope)}</p>
           <button>Allow</button></form>`;
    ctx.type = 'html';
    ctx.body = `<!doctype html><title>${prompt.name}</title>${form}
      <form method="post" action="/interaction/${uid}/abort"><button>Cancel</button></form>`;
    return;
  }
  if (ctx.method !== 'POST') ctx.throw(405);
  let result;
  if (action === 'login' && prompt.name === 'login') {
    const login = (await readForm(ctx.req)).get('login');
    if (!login) ctx.throw(400, 'login is required');
    result = { login: { accountId: login, ...(acr ? { acr } : {}), amr: ['pwd'] } };
  } else if (action === 'confirm' && prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) {
      grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    }
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    result = { consent: { grantId: await grant.save() } };
  } else if (action === 'abort') {
    result = { error: 'access_denied', error_description: 'the user cancelled' };
  } else {
    ctx.throw(400, `cannot ${action} during ${prompt.name}`);
  }
  await provider.interactionFinished(ctx.req, ctx.res, result, {
    mergeWithLastSubmission: action !== 'abort',
  });
  ctx.respond = false; // interactionFinished wrote the redirect
}

provider.use(async (ctx, next) => {
  const match = /^\/interaction\/([\w-]+)(?:\/(login|confirm|abort))?$/.exec(ctx.path);
  if (!match) return next();
  return interaction(ctx, match[1], match[2]);
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
