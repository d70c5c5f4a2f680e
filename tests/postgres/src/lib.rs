//! A throwaway PostgreSQL cluster for the tests and benchmarks.
//!
//! [`cluster`] starts one per process, the first time it is asked for:
//! Debian's `postgresql` binaries (`./dev.sh setup` installs them), a new
//! cluster from `initdb` in a temporary directory, and a server that
//! listens only on a Unix socket there. Run as root (CI), the cluster
//! belongs to the `postgres` user the package creates, as PostgreSQL
//! refuses to run as root. The server gets `SIGINT` (a fast shutdown) when
//! the process ends, however it ends, and the next process removes the
//! directories of clusters whose process is gone. Each test takes a
//! database of its own ([`Cluster::database`]).
//!
//! The tests' server runs with `fsync=off` (they are about taskhost's
//! semantics, not PostgreSQL's durability); the benchmarks' one
//! ([`durable_cluster`]) flushes every commit, as PostgreSQL ships. Both
//! trust whoever reaches their socket, which only the directory's owner
//! (and root) can.
//!
//! [`tls_cluster`] also listens on a loopback TCP port, and there takes
//! only TLS connections (`hostssl`) with a password: its certificate is
//! signed by a certificate authority made for it ([`Cluster::tls`]).

use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The port in the socket's name (the server listens on no TCP port,
/// except the TLS cluster, which takes a free one).
const PORT: u16 = 5432;
/// The cluster's superuser.
const USER: &str = "taskhost";
/// Prefix of the clusters' directories in the temporary directory.
const PREFIX: &str = "taskhost-pg-";

/// A running throwaway cluster.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    next: AtomicU32,
    tls: Option<Tls>,
}

/// What a TLS cluster's clients need: where it listens on TCP, the
/// superuser's password there, and the certificate authority that signed
/// the server's certificate (PEM, written in the cluster's directory).
#[derive(Debug, Clone)]
pub struct Tls {
    /// The loopback port it listens on.
    pub port: u16,
    /// The superuser's password (TCP connections must give it).
    pub password: String,
    /// The PEM file of the authority that signed the server's certificate
    /// (for `localhost` and `127.0.0.1`).
    pub ca: PathBuf,
    /// The PEM file of another authority, which signed nothing of this
    /// server's: a client trusting only it must refuse the server.
    pub other_ca: PathBuf,
}

/// Which cluster to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Test,
    Durable,
    Tls,
}

/// The process's cluster for tests (`fsync=off`), started on first use.
/// Panics, saying what to install, when PostgreSQL is missing or does not
/// start.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start_retrying(Kind::Test))
}

/// The process's cluster for benchmarks: durable as PostgreSQL ships
/// (`fsync` on, every commit flushed), started on first use.
pub fn durable_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start_retrying(Kind::Durable))
}

/// The process's cluster for TLS tests (`fsync=off`), started on first
/// use: its Unix socket as the others', and a loopback TCP port that takes
/// only TLS connections with the superuser's password ([`Cluster::tls`]).
pub fn tls_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start_retrying(Kind::Tls))
}

impl Cluster {
    /// The URL of a new, empty database named after `name` (unique in
    /// this process).
    pub fn database(&self, name: &str) -> String {
        self.url(&self.new_database(name))
    }

    /// A new, empty database named after `name` (unique in this process):
    /// its name.
    pub fn new_database(&self, name: &str) -> String {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        // PostgreSQL keeps 63 bytes of a name: the number stays whole.
        let db: String = name
            .chars()
            .take(40)
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .collect();
        let db = format!("{db}_{n}");
        let out = self.psql("postgres", &format!("CREATE DATABASE \"{db}\""));
        assert!(out.status.success(), "CREATE DATABASE {db}: {}", String::from_utf8_lossy(&out.stderr));
        db
    }

    /// The URL of database `db` on the Unix socket.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@localhost:{}/{db}?host={}", self.port, self.dir.display())
    }

    /// What TLS clients need, for the cluster [`tls_cluster`] started.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// The URL of database `db` over TCP on the loopback address, with the
    /// password, for [`tls_cluster`]'s cluster (no `sslmode`: the caller
    /// adds its own query).
    pub fn tcp_url(&self, db: &str) -> Option<String> {
        let tls = self.tls.as_ref()?;
        Some(format!("postgres://{USER}:{}@localhost:{}/{db}", tls.password, tls.port))
    }

    /// Runs one SQL command with `psql` on database `db`.
    pub fn psql(&self, db: &str, sql: &str) -> std::process::Output {
        Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", db, "-c", sql])
            .output()
            .expect("psql runs")
    }

    /// The directory holding the cluster's data and socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts a cluster of `kind`, again on another port when the one
    /// found free was taken before the server bound it (other tests take
    /// ports too); panics, saying why, when it cannot.
    fn start_retrying(kind: Kind) -> Cluster {
        let mut tries = 0;
        loop {
            match Cluster::start(kind) {
                Ok(cluster) => return cluster,
                Err(e) if tries < 5 && e.contains("could not bind") => tries += 1,
                Err(e) => panic!("cannot start a throwaway PostgreSQL: {e}"),
            }
        }
    }

    fn start(kind: Kind) -> Result<Cluster, String> {
        let bin = binaries()?;
        let tmp = std::env::temp_dir();
        remove_orphans(&tmp);
        let suffix = match kind {
            Kind::Test => "",
            Kind::Durable => "-durable",
            Kind::Tls => "-tls",
        };
        let dir = tmp.join(format!("{PREFIX}{}{suffix}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // Its owner only (root gets in anyway): the server trusts whoever
        // reaches its socket.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        if dir.join(".s.PGSQL.65535").as_os_str().len() > 107 {
            return Err(format!("{} is too long a path for a Unix socket: set TMPDIR to a shorter one", dir.display()));
        }
        let owner = owner()?;
        if let Some((uid, gid)) = owner {
            chown(&dir, Some(uid), Some(gid)).map_err(|e| format!("giving {} to postgres: {e}", dir.display()))?;
        }
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.arg("-D").arg(&data).args(["-U", USER, "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"]);
        initdb.arg("--no-instructions");
        let password = (kind == Kind::Tls).then(password);
        if let Some(password) = &password {
            let file = dir.join("password");
            write_owned(&file, password.as_bytes(), owner)?;
            initdb.arg(format!("--pwfile={}", file.display()));
        }
        let out = as_owner(&mut initdb, owner).output().map_err(|e| format!("running initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let port = if kind == Kind::Tls { free_port()? } else { PORT };
        let log = std::fs::File::create(dir.join("server.log")).map_err(|e| format!("server log: {e}"))?;
        if let Some((uid, gid)) = owner {
            chown(dir.join("server.log"), Some(uid), Some(gid)).map_err(|e| format!("server log: {e}"))?;
        }
        let mut server = Command::new(bin.join("postgres"));
        server.arg("-D").arg(&data).arg("-k").arg(&dir).args(["-p", &port.to_string()]);
        let fsync = if kind == Kind::Durable { "fsync=on" } else { "fsync=off" };
        let mut settings: Vec<String> =
            ["listen_addresses=", "unix_socket_permissions=0700", fsync, "max_connections=300"]
                .map(String::from)
                .into();
        let tls = match password {
            Some(password) => {
                let tls = certify(&dir, &data, port, password, owner)?;
                settings[0] = "listen_addresses=127.0.0.1".into();
                settings.push("ssl=on".into());
                settings.push(format!("ssl_cert_file={}", data.join("server.crt").display()));
                settings.push(format!("ssl_key_file={}", data.join("server.key").display()));
                Some(tls)
            }
            None => None,
        };
        for setting in settings {
            server.args(["-c", &setting]);
        }
        server.stdin(Stdio::null()).stdout(log.try_clone().map_err(|e| e.to_string())?).stderr(log);
        as_owner(&mut server, owner);
        let parent = std::process::id();
        // SAFETY: prctl and getppid are async-signal-safe and touch no
        // memory of ours. This runs after the user switch, which would
        // clear the setting.
        unsafe {
            server.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // This process ended before the setting took: no server.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("the test process ended"));
                }
                Ok(())
            });
        }
        // The parent-death signal follows the thread that forked: this
        // one lives as long as the server does.
        let (started, spawned) = std::sync::mpsc::channel();
        let exited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server_exited = exited.clone();
        std::thread::Builder::new()
            .name("postgres".into())
            .spawn(move || match server.spawn() {
                Ok(mut child) => {
                    let _ = started.send(Ok(()));
                    let _ = child.wait();
                    server_exited.store(true, Ordering::SeqCst);
                }
                Err(e) => drop(started.send(Err(format!("starting postgres: {e}")))),
            })
            .map_err(|e| e.to_string())?;
        spawned.recv().map_err(|e| e.to_string())??;
        let cluster = Cluster { dir, bin, port, next: AtomicU32::new(0), tls };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(cluster.bin.join("pg_isready"))
                .arg("-h")
                .arg(&cluster.dir)
                .args(["-p", &port.to_string(), "-U", USER, "-q"])
                .status()
                .map_err(|e| format!("running pg_isready: {e}"))?;
            if ready.success() {
                return Ok(cluster);
            }
            let log = || std::fs::read_to_string(cluster.dir.join("server.log")).unwrap_or_default();
            if exited.load(Ordering::SeqCst) {
                return Err(format!("the server exited at start; its log:\n{}", log()));
            }
            if Instant::now() > deadline {
                return Err(format!("the server did not become ready in 60 s; its log:\n{}", log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The directory of PostgreSQL's server binaries: Debian's newest
/// `/usr/lib/postgresql/N/bin`, else where `initdb` is on `PATH`.
fn binaries() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
        .ok_or_else(|| "PostgreSQL's server is not installed: run `./dev.sh setup` (Debian: postgresql)".into())
}

/// Who runs the cluster: the `postgres` user when this process is root
/// (PostgreSQL refuses root), else this process's user (`None`).
fn owner() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    // SAFETY: a NUL-terminated name; the entry is read before any other
    // call that could overwrite it.
    let entry = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if entry.is_null() {
        return Err(
            "running as root, and there is no `postgres` user to run PostgreSQL as: run `./dev.sh setup`".into()
        );
    }
    // SAFETY: non-null, from getpwnam just above.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some((uid, gid)))
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = owner {
        // From root, std also drops the supplementary groups.
        command.uid(uid).gid(gid);
    }
    command
}

/// Removes the directories of clusters whose process has ended.
fn remove_orphans(tmp: &Path) {
    for entry in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .map(|p| p.trim_end_matches("-durable").trim_end_matches("-tls"));
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A password for the TLS cluster's superuser, new each start.
fn password() -> String {
    use std::hash::BuildHasher;
    let state = std::collections::hash_map::RandomState::new();
    format!("{:016x}{:016x}", state.hash_one(std::process::id()), state.hash_one(Instant::now()))
}

/// A TCP port free on the loopback address now.
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("finding a free port: {e}"))
}

/// Writes `bytes` to `path`, readable by its owner only, owned by `owner`.
fn write_owned(path: &Path, bytes: &[u8], owner: Option<(u32, u32)>) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some((uid, gid)) = owner {
        chown(path, Some(uid), Some(gid)).map_err(|e| format!("giving {} to postgres: {e}", path.display()))?;
    }
    Ok(())
}

/// Makes the TLS cluster's certificates (an authority, the server's
/// certificate it signs, and an authority that signs nothing), and lets
/// TCP clients in only over TLS with the password.
fn certify(dir: &Path, data: &Path, port: u16, password: String, owner: Option<(u32, u32)>) -> Result<Tls, String> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let fail = |e: rcgen::Error| format!("making the test certificates: {e}");
    let authority = |name: &str| -> Result<CertifiedIssuer<'static, KeyPair>, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(fail)?).map_err(fail)
    };
    let ca = authority("taskhost test authority")?;
    let other = authority("taskhost other authority")?;
    let server_key = KeyPair::generate().map_err(fail)?;
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).map_err(fail)?;
    let server = params.signed_by(&server_key, &ca).map_err(fail)?;
    write_owned(&data.join("server.crt"), server.pem().as_bytes(), owner)?;
    write_owned(&data.join("server.key"), server_key.serialize_pem().as_bytes(), owner)?;
    let (ca_file, other_file) = (dir.join("ca.pem"), dir.join("other-ca.pem"));
    for (file, pem) in [(&ca_file, ca.as_ref().pem()), (&other_file, other.as_ref().pem())] {
        std::fs::write(file, pem).map_err(|e| format!("writing {}: {e}", file.display()))?;
    }
    // The socket as before; TCP only with TLS and the password.
    let hba = "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n";
    write_owned(&data.join("pg_hba.conf"), hba.as_bytes(), owner)?;
    Ok(Tls { port, password, ca: ca_file, other_ca: other_file })
}
