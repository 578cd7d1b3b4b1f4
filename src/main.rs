//! `berth`: the registry server and its command-line tools.

mod backup;
mod admin;
mod config;
mod encryption;
mod remote;
mod server;
mod signing;
mod tls;

use anyhow::Context;
use clap::{Parser, Subcommand};
use config::Config;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "berth", version, about = "A container image registry (OCI Distribution v1.1)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks only: add synthetic repositories to a stopped data directory.
    #[command(hide = true)]
    SeedSearch {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        repositories: usize,
        #[arg(long, default_value = "seed")]
        prefix: String,
    },
    /// Run the registry.
    Serve {
        /// Address to listen on (overrides server.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (overrides storage.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// TOML configuration file.
        #[arg(long, env = "BERTH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Collect garbage: unreferenced blobs, untagged manifests and expired
    /// tags (per configuration), expired uploads. Against a running server
    /// with --url (admin endpoint), or directly on a stopped data directory.
    Gc {
        /// Report what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Storage used per repository and per configured quota.
    Usage {
        #[command(flatten)]
        target: Target,
    },
    /// Inspect configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage users in an htpasswd file (bcrypt). Passwords are read from a
    /// prompt, or from the first line of standard input when it is not a terminal.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Encryption-at-rest helpers.
    Encryption {
        #[command(subcommand)]
        command: EncryptionCommand,
    },
    /// Backups: init, create, list, verify, restore, forget.
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// TLS helpers.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Sign an image (cosign format, stored under the sha256-<hex>.sig tag).
    /// The key's password comes from a prompt, or the first line of
    /// standard input when it is not a terminal.
    Sign {
        /// HOST[:PORT]/REPOSITORY:TAG or HOST[:PORT]/REPOSITORY@sha256:…
        image: String,
        /// Private key (from `berth keys generate` or `cosign generate-key-pair`).
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        remote: signing::Remote,
    },
    /// Verify an image's cosign signatures (and sigstore bundles) with a
    /// public key; exit code 0 when one verifies, 1 otherwise.
    Verify {
        image: String,
        /// PEM public key.
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        remote: signing::Remote,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write an ECDSA P-256 key pair: PREFIX.key (encrypted with a password
    /// from a prompt or standard input, cosign's format) and PREFIX.pub.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}

/// Where an administrative command acts.
#[derive(clap::Args)]
struct Target {
    /// A running server, http(s)://HOST:PORT (needs the admin action when auth is on).
    #[arg(long, conflicts_with = "data_dir")]
    url: Option<String>,
    /// User for --url; the password comes from BERTH_PASSWORD.
    #[arg(long, requires = "url")]
    user: Option<String>,
    /// CA certificate (PEM) trusted for an https:// --url, besides the system roots.
    #[arg(long, requires = "url")]
    ca_cert: Option<PathBuf>,
    /// A data directory no server is using (overrides storage.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TOML configuration file (policies, encryption, data directory).
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user.
    Add { name: String, #[arg(long)] file: PathBuf },
    /// Change a user's password.
    Passwd { name: String, #[arg(long)] file: PathBuf },
    /// Remove a user.
    Remove { name: String, #[arg(long)] file: PathBuf },
}

#[derive(Subcommand)]
enum EncryptionCommand {
    /// Print a new random key (base64) for encryption.key_file or BERTH_ENCRYPTION_KEY.
    NewKey,
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Write a private CA (ca.crt, ca.key) and a server certificate signed by
    /// it (server.crt, server.key) for the given host names and addresses.
    SelfSigned {
        /// DNS name or IP address the server is reached by (repeatable).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Output directory.
        #[arg(long, default_value = "./berth-tls")]
        out: PathBuf,
        /// Validity of the server certificate in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration, commented.
    Defaults,
    /// Validate a configuration file.
    Check { file: PathBuf },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { listen, data_dir, config } => serve(listen, data_dir, config),
        Command::SeedSearch { data_dir, repositories, prefix } => {
            berth_meta::seed_synthetic(&data_dir.join("metadata.db"), &prefix, repositories).map_err(anyhow::Error::from)
        }
        Command::Gc { dry_run, target } => admin::gc(target, dry_run),
        Command::Usage { target } => admin::usage(target),
        Command::Config { command: ConfigCommand::Defaults } => {
            print!("{}", Config::defaults_toml());
            Ok(())
        }
        Command::Config { command: ConfigCommand::Check { file } } => check(&file),
        Command::User { command } => user(command),
        Command::Backup { command } => backup::run(command),
        Command::Encryption { command: EncryptionCommand::NewKey } => {
            println!("{}", encryption::new_key());
            Ok(())
        }
        Command::Keys { command: KeysCommand::Generate { out } } => signing::generate(&out),
        Command::Sign { image, key, remote } => signing::sign(&image, &key, &remote),
        Command::Verify { image, key, remote } => match signing::verify(&image, &key, &remote) {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Tls { command: TlsCommand::SelfSigned { hosts, out, days } } => tls::self_signed(&hosts, &out, days)
            .map(|()| {
                println!("wrote {0}/ca.crt, {0}/ca.key, {0}/server.crt, {0}/server.key", out.display());
                println!("serve with: [tls] cert = \"{0}/server.crt\"  key = \"{0}/server.key\"", out.display());
                println!("clients trust {}/ca.crt (docker: /etc/docker/certs.d/HOST:PORT/ca.crt)", out.display());
            }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn check(file: &std::path::Path) -> anyhow::Result<()> {
    // As the server would see it: the file (errors name the line), then
    // BERTH_* variables.
    let config = config::Config::load(Some(file))?;
    // Files the server reads at start-up must be there.
    let files = [("tls.cert", &config.tls.cert), ("tls.key", &config.tls.key), ("encryption.key_file", &config.encryption.key_file)];
    for (key, path) in files {
        if !path.is_empty() {
            std::fs::metadata(path).with_context(|| format!("{key}: {path}"))?;
        }
    }
    // The users file is checked as start-up would (hash kinds, names).
    if !config.auth.htpasswd.is_empty() {
        berth_auth::htpasswd::Htpasswd::load(std::path::Path::new(&config.auth.htpasswd))
            .map_err(|e| anyhow::anyhow!("auth.htpasswd: {e}"))?;
    }
    println!("{}: ok", file.display());
    Ok(())
}

fn read_password() -> anyhow::Result<String> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            anyhow::bail!("passwords differ");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        anyhow::bail!("empty password");
    }
    Ok(password)
}

fn user(command: UserCommand) -> anyhow::Result<()> {
    use berth_auth::htpasswd::{check_user_name, update_file};
    let (name, file, result) = match command {
        UserCommand::Add { name, file } => {
            // Refused before a password is asked for.
            check_user_name(&name).map_err(|e| anyhow::anyhow!(e))?;
            let pw = read_password()?;
            let r = update_file(&file, &name, Some(&pw), Some(false));
            (name, file, r.map(|()| "added"))
        }
        UserCommand::Passwd { name, file } => {
            let pw = read_password()?;
            let r = update_file(&file, &name, Some(&pw), Some(true));
            (name, file, r.map(|()| "password changed"))
        }
        UserCommand::Remove { name, file } => {
            let r = update_file(&file, &name, None, Some(true));
            (name, file, r.map(|()| "removed"))
        }
    };
    let what = result.map_err(|e| anyhow::anyhow!(e))?;
    println!("{name}: {what} ({})", file.display());
    Ok(())
}

fn serve(listen: Option<String>, data_dir: Option<PathBuf>, file: Option<PathBuf>) -> anyhow::Result<()> {
    let mut config = Config::load(file.as_deref())?;
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    if let Some(dir) = data_dir {
        config.storage.data_dir = dir;
    }
    config.validate()?;
    init_logging(&config)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(server::run(config))
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&config.log.level).context("log.level")?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    Ok(())
}
