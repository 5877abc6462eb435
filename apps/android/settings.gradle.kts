// Edge Toolkit demo app for Android: runs the portrait segmenter and the V-MoE classifier
// from a `toolkit export tflite --bundle` folder with LiteRT. See README.md.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "EdgeToolkitDemo"
include(":app")
