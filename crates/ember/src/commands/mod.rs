//! One module per CLI verb.

pub mod bench;
pub mod deploy;
pub mod image;
pub mod invoke;
pub mod logs;
pub mod ls;
pub mod rm;
pub mod serve;
pub mod snap;
pub mod up;

use ember_api::client::Client;

/// Where the CLI looks for the daemon unless told (`serve`'s default address).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Where the CLI finds the API.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The daemon's address
    #[arg(long, env = "EMBER_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// API token, if the daemon requires one
    #[arg(long, env = "EMBER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ClientArgs {
    pub fn client(&self) -> Client {
        Client::new(&self.url, self.token.clone().filter(|t| !t.is_empty()))
    }
}
