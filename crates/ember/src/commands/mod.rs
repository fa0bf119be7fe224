//! One module per CLI verb.

pub mod bench;
pub mod bench_cluster;
pub mod cluster;
pub mod deploy;
pub mod gateway;
pub mod image;
pub mod instances;
pub mod invoke;
pub mod logs;
pub mod ls;
pub mod rm;
pub mod serve;
pub mod snap;
pub mod snapshot;
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

#[cfg(test)]
mod tests {
    /// In the synopses of docs/bench.md and docs/snap.md, `[--flag value]` states the flag's
    /// default (`[--flag VALUE]`, an example list ending in `...`, `a|b` choices and
    /// `--workloads` do not): each must be the default the help has.
    #[test]
    fn doc_synopses_state_the_defaults_the_help_has() {
        use clap::CommandFactory;
        let mut cli = crate::Cli::command();
        cli.build();
        let mut checked = 0;
        for page in ["bench.md", "snap.md"] {
            let path = format!("{}/../../docs/{page}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap();
            let mut command: Option<&clap::Command> = None;
            for line in text.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.first() == Some(&"ember") {
                    // `ember bench [experiment]` or `ember snap <verb>`.
                    let top = words.get(1).and_then(|w| cli.find_subcommand(w));
                    command = match (words.get(1), top) {
                        (Some(&"snap"), Some(t)) => words.get(2).and_then(|v| t.find_subcommand(v)),
                        (_, t) => t,
                    };
                } else if !line.starts_with(' ') || line.trim().is_empty() {
                    command = None;
                }
                let Some(cmd) = command else { continue };
                for bracket in line.split('[').skip(1) {
                    let inner = bracket.split(']').next().unwrap_or_default();
                    let Some((flag, value)) = inner.split_once(' ') else {
                        continue;
                    };
                    let Some(long) = flag.strip_prefix("--") else {
                        continue;
                    };
                    // --workloads' default depends on the experiment (its help says so).
                    let example =
                        value.contains("...") || value.contains('|') || long == "workloads";
                    if example || value.chars().all(|c| c.is_ascii_uppercase()) {
                        continue;
                    }
                    let arg = cmd
                        .get_arguments()
                        .find(|a| a.get_long() == Some(long))
                        .unwrap_or_else(|| panic!("{page}: {line:?}: no {flag} in the help"));
                    let default: Vec<String> = arg
                        .get_default_values()
                        .iter()
                        .map(|v| v.to_string_lossy().into_owned())
                        .collect();
                    assert_eq!(
                        default.join(","),
                        value,
                        "{page}: {line:?} says {flag} defaults to {value}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(
            checked > 20,
            "only {checked} defaults found in the synopses"
        );
    }
}
