//! People: signing in with the organisation's OpenID provider, what the
//! sign-in must prove (MFA), which groups get which management role, how
//! long sessions last; and whether admin keys are accepted at all.

use std::time::Duration;

use keyplane_domain::{ManagementRole, Mode};
use reqwest::Url;
use secrecy::SecretString;

use crate::config::sources::{Sources, parse_with, secret_from_env};
use crate::config::{ConfigError, Settings};

/// Signing in with OpenID Connect.
#[derive(Clone)]
pub struct OidcSettings {
    /// The provider's issuer, exactly as its ID tokens name it.
    pub issuer: String,
    /// keyplane's client id at the provider (the ID token's audience).
    pub client_id: String,
    /// keyplane's client secret, if the provider gave it one.
    pub client_secret: Option<SecretString>,
    /// Where the provider sends the browser back: keyplane's
    /// `/v1/auth/oidc/callback`, as the browser reaches it.
    pub redirect_url: Url,
    /// What is asked of the provider.
    pub scopes: String,
    /// `amr` values (RFC 8176), any one of which proves MFA; empty = none asked.
    pub require_amr: Vec<String>,
    /// `acr` values, any one of which is enough; empty = none asked.
    pub require_acr: Vec<String>,
    /// The ID token claim whose values the role map reads.
    pub role_claim: String,
    /// Claim values and the role each gives; the first that matches wins.
    pub role_map: Vec<(String, ManagementRole)>,
    /// How recent an MFA sign-in a dangerous operation needs.
    pub step_up: Duration,
    /// How long a browser session lasts, used or not.
    pub session_ttl: Duration,
    /// How long a browser session lasts unused.
    pub session_idle: Duration,
    /// How long a terminal's token (the device flow) lasts.
    pub device_token_ttl: Duration,
}

impl OidcSettings {
    /// Whether the session cookie goes only over HTTPS (with the `__Host-`
    /// prefix): when the browser reaches keyplane over HTTPS.
    pub fn secure_cookies(&self) -> bool {
        self.redirect_url.scheme() == "https"
    }

    /// keyplane's origin as the browser sees it (`https://keyplane.example`).
    pub fn public_origin(&self) -> String {
        self.redirect_url.origin().ascii_serialization()
    }

    /// Whether a sign-in must prove MFA at all.
    pub fn requires_mfa(&self) -> bool {
        !self.require_amr.is_empty() || !self.require_acr.is_empty()
    }
}

/// Whether admin keys (and the bootstrap token) are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminKeys {
    /// Accepted: automation and people alike may use them.
    Enabled,
    /// Refused: only people signed in with the identity provider manage keyplane.
    Disabled,
}

/// Reads the people settings into `settings`.
pub(super) fn read(sources: &Sources<'_>, settings: &mut Settings) -> Result<(), ConfigError> {
    let args = sources.args();
    if let Some(admin_keys) =
        sources.parsed("KEYPLANE_ADMIN_KEYS", &args.admin_keys, |text| match text {
            "enabled" => Ok(AdminKeys::Enabled),
            "disabled" => Ok(AdminKeys::Disabled),
            _ => Err("expected enabled or disabled"),
        })?
    {
        settings.admin_keys = admin_keys;
    }

    // An empty value (a Compose pass-through of an unset variable) is unset.
    let set = |text: Option<String>| text.filter(|t| !t.trim().is_empty());
    let issuer = set(sources.text("KEYPLANE_OIDC_ISSUER", &args.oidc_issuer)?);
    let client_id = set(sources.text("KEYPLANE_OIDC_CLIENT_ID", &args.oidc_client_id)?);
    let redirect = set(sources.text("KEYPLANE_OIDC_REDIRECT_URL", &args.oidc_redirect_url)?);
    let (issuer, client_id, redirect) = match (issuer, client_id, redirect) {
        (None, None, None) => {
            if settings.admin_keys == AdminKeys::Disabled {
                return Err(ConfigError::new(
                    "KEYPLANE_ADMIN_KEYS",
                    "disabled leaves no one able to manage keyplane without \
                     KEYPLANE_OIDC_ISSUER (sign-in with the identity provider)",
                ));
            }
            return Ok(());
        }
        (Some(issuer), Some(client_id), Some(redirect)) => (issuer, client_id, redirect),
        (issuer, client_id, _) => {
            let missing = if issuer.is_none() {
                "KEYPLANE_OIDC_ISSUER"
            } else if client_id.is_none() {
                "KEYPLANE_OIDC_CLIENT_ID"
            } else {
                "KEYPLANE_OIDC_REDIRECT_URL"
            };
            return Err(ConfigError::new(
                missing,
                "required with the other KEYPLANE_OIDC_ settings \
                 (issuer, client id and redirect URL)",
            ));
        }
    };
    let mode = settings.mode;
    let issuer_url = parse_with("KEYPLANE_OIDC_ISSUER", &issuer, Url::parse)?;
    let redirect_url = parse_with("KEYPLANE_OIDC_REDIRECT_URL", &redirect, Url::parse)?;
    for (variable, url) in [
        ("KEYPLANE_OIDC_ISSUER", &issuer_url),
        ("KEYPLANE_OIDC_REDIRECT_URL", &redirect_url),
    ] {
        match url.scheme() {
            "https" => {}
            "http" if mode == Mode::Dev => {}
            "http" => {
                return Err(ConfigError::new(
                    variable,
                    format!("must be an https:// URL in {mode} mode"),
                ));
            }
            _ => return Err(ConfigError::new(variable, "expected an http(s):// URL")),
        }
    }
    if redirect_url.path() != "/v1/auth/oidc/callback" {
        return Err(ConfigError::new(
            "KEYPLANE_OIDC_REDIRECT_URL",
            "expected keyplane's callback as browsers reach it, \
             e.g. https://keyplane.example/v1/auth/oidc/callback",
        ));
    }

    let list = |text: &str| -> Vec<String> {
        text.split([',', ' '])
            .map(str::trim)
            .filter(|value| !value.is_empty() && *value != "none")
            .map(str::to_owned)
            .collect()
    };
    // Only `none` turns the amr check off; an empty value is unset (`mfa`).
    let require_amr = set(sources.text("KEYPLANE_OIDC_REQUIRE_AMR", &args.oidc_require_amr)?)
        .map_or_else(|| vec!["mfa".to_owned()], |text| list(&text));
    let require_acr = sources
        .text("KEYPLANE_OIDC_REQUIRE_ACR", &args.oidc_require_acr)?
        .map_or_else(Vec::new, |text| list(&text));
    if mode != Mode::Dev && require_amr.is_empty() && require_acr.is_empty() {
        return Err(ConfigError::new(
            "KEYPLANE_OIDC_REQUIRE_AMR",
            format!(
                "{mode} mode signs people in only with MFA: name the amr values \
                 (e.g. mfa) or KEYPLANE_OIDC_REQUIRE_ACR values that prove it"
            ),
        ));
    }

    let role_claim = sources
        .text("KEYPLANE_OIDC_ROLE_CLAIM", &args.oidc_role_claim)?
        .unwrap_or_else(|| "groups".to_owned());
    let variable = "KEYPLANE_OIDC_ROLE_MAP";
    let Some(map) = sources.text(variable, &args.oidc_role_map)? else {
        return Err(ConfigError::new(
            variable,
            "required with KEYPLANE_OIDC_ISSUER: which groups get which role, \
             e.g. keyplane-admins=admin,keyplane-ops=operator",
        ));
    };
    let role_map = map
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            parse_with(variable, entry, |entry| {
                let (value, role) = entry
                    .rsplit_once('=')
                    .ok_or("expected value=role pairs, e.g. keyplane-admins=admin")?;
                let role = role
                    .trim()
                    .parse::<ManagementRole>()
                    .map_err(|_| "expected a role: admin, operator, auditor or viewer")?;
                Ok::<_, &str>((value.trim().to_owned(), role))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if role_map.is_empty() {
        return Err(ConfigError::new(
            variable,
            "expected at least one value=role pair",
        ));
    }

    let duration = |variable: &str, arg: &Option<String>, default: Duration| {
        Ok::<_, ConfigError>(
            sources
                .duration(variable, arg)?
                .filter(|d| !d.is_zero())
                .unwrap_or(default),
        )
    };
    settings.oidc = Some(OidcSettings {
        issuer,
        client_id,
        client_secret: secret_from_env("KEYPLANE_OIDC_CLIENT_SECRET")?,
        redirect_url,
        scopes: sources
            .text("KEYPLANE_OIDC_SCOPES", &args.oidc_scopes)?
            .unwrap_or_else(|| "openid email profile groups".to_owned()),
        require_amr,
        require_acr,
        role_claim,
        role_map,
        step_up: duration(
            "KEYPLANE_OIDC_STEP_UP",
            &args.oidc_step_up,
            Duration::from_secs(600),
        )?,
        session_ttl: duration(
            "KEYPLANE_SESSION_TTL",
            &args.session_ttl,
            Duration::from_secs(8 * 3600),
        )?,
        session_idle: duration(
            "KEYPLANE_SESSION_IDLE",
            &args.session_idle,
            Duration::from_secs(1800),
        )?,
        device_token_ttl: duration(
            "KEYPLANE_DEVICE_TOKEN_TTL",
            &args.device_token_ttl,
            Duration::from_secs(3600),
        )?,
    });
    Ok(())
}
