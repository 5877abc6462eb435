import CryptoKit
import Foundation

/// A bundle folder the app can see, with the "kind" its bundle.json names (not yet verified).
struct BundleEntry: Identifiable, Hashable {
    let url: URL
    let kind: String
    let origin: String

    var id: URL { url }
    var name: String { url.lastPathComponent }
}

/// A folder whose every file listed in bundle.json (the Core ML package's files included)
/// matched its size and SHA-256, and whose package holds no file the manifest does not list.
struct VerifiedBundle {
    let url: URL
    let manifest: Manifest
    let package: URL

    var name: String { url.lastPathComponent }

    func file(_ name: String) -> URL { url.appendingPathComponent(name) }
}

/// Where bundles live and how they are trusted. A bundle here is the folder
/// `toolkit export coreml --model M --bundle DIR` wrote: bundle.json, model.mlpackage/ and
/// the sample files. Two places are searched:
///
///  - Documents/bundles/NAME/, filled by "Import bundle folder" (the Files app: AirDrop,
///    iCloud Drive or a Mac's Finder put the folder on the phone first);
///  - a folder reference named "bundles" inside the app, for an Xcode project that adds one.
///
/// Nothing is compiled before `verify` compared every listed file with the manifest: the
/// package's files are listed one by one ("model.mlpackage/Data/com.apple.CoreML/
/// model.mlmodel", ".../weights/weight.bin", ..), and a file inside the package that the
/// manifest does not list refuses the bundle too, since MLModel.compileModel would read it.
@MainActor
final class BundleLibrary: ObservableObject {
    @Published private(set) var entries: [BundleEntry] = []
    @Published var importError: String?

    static let folder = "bundles"

    static var documentsFolder: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
            .appendingPathComponent(folder, isDirectory: true)
    }

    func refresh() {
        var found: [BundleEntry] = []
        let roots: [(URL?, String)] = [
            (Self.documentsFolder, "imported"),
            (Bundle.main.url(forResource: Self.folder, withExtension: nil), "in the app"),
        ]
        for case let (root?, origin) in roots {
            let children = (try? FileManager.default.contentsOfDirectory(
                at: root, includingPropertiesForKeys: nil)) ?? []
            for dir in children where FileManager.default.fileExists(atPath: dir.appendingPathComponent("bundle.json").path) {
                found.append(BundleEntry(url: dir, kind: Self.kind(of: dir), origin: origin))
            }
        }
        entries = found.sorted { $0.name < $1.name }
    }

    /// Copies a folder picked in the Files app into Documents/bundles/, replacing one of
    /// the same name.
    func importFolder(_ picked: URL) {
        importError = nil
        let scoped = picked.startAccessingSecurityScopedResource()
        defer { if scoped { picked.stopAccessingSecurityScopedResource() } }
        do {
            guard FileManager.default.fileExists(atPath: picked.appendingPathComponent("bundle.json").path) else {
                throw BundleError("\(picked.lastPathComponent) has no bundle.json: pick the folder `toolkit export coreml --bundle DIR` wrote")
            }
            let target = Self.documentsFolder.appendingPathComponent(picked.lastPathComponent, isDirectory: true)
            try FileManager.default.createDirectory(at: Self.documentsFolder, withIntermediateDirectories: true)
            if FileManager.default.fileExists(atPath: target.path) {
                try FileManager.default.removeItem(at: target)
            }
            try FileManager.default.copyItem(at: picked, to: target)
        } catch {
            importError = error.localizedDescription
        }
        refresh()
    }

    private static func kind(of dir: URL) -> String {
        guard let data = try? Data(contentsOf: dir.appendingPathComponent("bundle.json")),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        else { return "unreadable bundle.json" }
        return object["kind"] as? String ?? "llm"
    }

    /// Parses bundle.json, checks every file it lists (the package's included) and that
    /// the package holds nothing else.
    nonisolated static func verify(_ dir: URL) throws -> VerifiedBundle {
        let manifestURL = dir.appendingPathComponent("bundle.json")
        guard let data = try? Data(contentsOf: manifestURL) else {
            throw BundleError("\(dir.lastPathComponent) has no readable bundle.json: import the whole folder again")
        }
        let manifest = try Manifest.read(data)
        for name in manifest.files.keys.sorted() {
            try check(dir: dir, name: name, entry: manifest.files[name]!)
        }
        let package = dir.appendingPathComponent(manifest.model.file, isDirectory: true)
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: package.path, isDirectory: &isFolder), isFolder.boolValue else {
            throw BundleError("\(dir.lastPathComponent)/\(manifest.model.file) is not a package folder: import the whole bundle folder again")
        }
        let listed = Set(manifest.model.files ?? [])
        for name in try packageFiles(package, prefix: manifest.model.file) where !listed.contains(name) {
            throw BundleError("\(dir.lastPathComponent)/\(name) is inside the package but not in bundle.json: the package changed since export; import the bundle again")
        }
        return VerifiedBundle(url: dir, manifest: manifest, package: package)
    }

    /// Every regular file under `package`, as "<prefix>/<relative path>" (the manifest's
    /// spelling: "model.mlpackage/Data/com.apple.CoreML/model.mlmodel").
    private nonisolated static func packageFiles(_ package: URL, prefix: String) throws -> [String] {
        guard let walker = FileManager.default.enumerator(
            at: package, includingPropertiesForKeys: [.isRegularFileKey], options: [])
        else {
            throw BundleError("cannot read the package folder \(prefix): import the bundle again")
        }
        let root = package.standardizedFileURL.resolvingSymlinksInPath().path
        var names: [String] = []
        for case let url as URL in walker {
            let values = try url.resourceValues(forKeys: [.isRegularFileKey])
            guard values.isRegularFile == true else { continue }
            let path = url.standardizedFileURL.resolvingSymlinksInPath().path
            guard path.hasPrefix(root + "/") else { continue }
            names.append(prefix + "/" + String(path.dropFirst(root.count + 1)))
        }
        return names
    }

    private nonisolated static func check(dir: URL, name: String, entry: FileEntry) throws {
        if name.hasPrefix("/") || name.split(separator: "/").contains("..") {
            throw BundleError("bundle.json lists the file \(name) outside its folder: export the bundle again")
        }
        let url = dir.appendingPathComponent(name)
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: url.path),
              let size = attributes[.size] as? NSNumber
        else {
            throw BundleError("\(dir.lastPathComponent)/\(name) is missing: import the whole bundle folder again")
        }
        guard size.int64Value == entry.bytes else {
            throw BundleError("\(dir.lastPathComponent)/\(name) has \(size.int64Value) bytes, bundle.json says \(entry.bytes): the copy is incomplete; import it again")
        }
        let digest = try sha256(url)
        guard digest == entry.sha256.lowercased() else {
            throw BundleError("\(dir.lastPathComponent)/\(name) has SHA-256 \(digest.prefix(12)).., bundle.json says \(entry.sha256.prefix(12)).. : the file changed since export; import the bundle again")
        }
    }

    /// Lower-case hex SHA-256 of a file, read in 1 MiB pieces.
    nonisolated static func sha256(_ url: URL) throws -> String {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        var hasher = SHA256()
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            hasher.update(data: chunk)
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }
}
