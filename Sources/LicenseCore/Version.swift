/// The version of license-agent, the one place it is written: the daemon, `agentctl` and
/// `license-keytool` print it, `GetInfo` returns it, and `packaging/build-deb` reads it
/// (from `license-agent --version`) to name the Debian package.
public enum ProductVersion {
  public static let current = "0.5.0"
}
