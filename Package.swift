// swift-tools-version:6.0
// license-agent: keeps an SVM's licence from lapsing by accident.
// Layers (see README): LicenseCore decides, edge targets act, executables wire.
import PackageDescription

let package = Package(
  name: "license-agent",
  products: [
    .executable(name: "license-keytool", targets: ["license-keytool"])
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2")
  ],
  targets: [
    // Debian's libsodium for Ed25519: no crypto compiled on every build (README, "Why libsodium").
    .systemLibrary(
      name: "CSodium",
      pkgConfig: "libsodium",
      providers: [.apt(["libsodium-dev"])]
    ),
    // The pure core: keys, rules, state machine. No I/O, no clock.
    .target(name: "LicenseCore", dependencies: ["CSodium"]),
    // Edge: durable state and the trust directory, on real files.
    .target(name: "LicenseStorage", dependencies: ["LicenseCore"]),
    .executableTarget(
      name: "license-keytool",
      dependencies: [
        "LicenseCore", "LicenseStorage",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),
    // Test twins and fixtures shared by the test targets.
    .target(name: "LicenseTestSupport", dependencies: ["LicenseCore"], path: "Tests/LicenseTestSupport"),
    .testTarget(name: "LicenseCoreTests", dependencies: ["LicenseCore", "LicenseTestSupport"]),
    .testTarget(
      name: "LicenseStorageTests", dependencies: ["LicenseCore", "LicenseStorage", "LicenseTestSupport"]),
    .testTarget(
      name: "KeytoolTests",
      dependencies: ["LicenseCore", "LicenseTestSupport"],
      resources: [.copy("Fixtures")]
    ),
  ],
  swiftLanguageModes: [.v6]
)
