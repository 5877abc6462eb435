import SwiftUI

/// Three tabs over the bundles the app can see: portrait, classifier, bench.
@main
struct EdgeDemoApp: App {
    @StateObject private var library = BundleLibrary()

    var body: some Scene {
        WindowGroup {
            TabView {
                PortraitView()
                    .tabItem { Label("Portrait", systemImage: "person.crop.rectangle") }
                ClassifierView()
                    .tabItem { Label("Classifier", systemImage: "square.grid.3x3") }
                BenchView()
                    .tabItem { Label("Bench", systemImage: "speedometer") }
            }
            .environmentObject(library)
            .onAppear { library.refresh() }
        }
    }
}
