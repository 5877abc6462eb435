// swift-tools-version: 5.9
// An app package (the format Swift Playgrounds and Xcode open as an iOS app): no
// dependencies beyond the SDK (SwiftUI, Core ML, CryptoKit, PhotosUI, Core Image).
// Written by hand and NOT opened or built here (no macOS, no Xcode): see ../README.md,
// which also gives the plain Xcode-project route with the same Sources/ folder.
import PackageDescription
import AppleProductTypes

let package = Package(
    name: "EdgeDemo",
    platforms: [
        // The exported .mlpackage is an iOS 18 ML program (export/coreml/vision.py).
        .iOS("18.0")
    ],
    products: [
        .iOSApplication(
            name: "EdgeDemo",
            targets: ["AppModule"],
            bundleIdentifier: "org.edgetoolkit.demo",
            displayVersion: "0.1",
            bundleVersion: "1",
            appIcon: .placeholder(icon: .leaf),
            accentColor: .presetColor(.blue),
            supportedDeviceFamilies: [
                .pad,
                .phone
            ],
            supportedInterfaceOrientations: [
                .portrait,
                .landscapeRight,
                .landscapeLeft
            ]
        )
    ],
    targets: [
        .executableTarget(
            name: "AppModule",
            path: "Sources"
        )
    ]
)
