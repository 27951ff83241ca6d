;; The inventory example service, built with Leiningen from the same source tree
;; as pom.xml. Offline, from Debian's packaged libraries: like Debian's own
;; Leiningen builds, the local repository is the system Maven repository.
;;   lein -o uberjar   ->  target/lein/inventory-1.0.0-standalone.jar
(defproject example/inventory "1.0.0"
  :description "A small Ring + Jetty service: the Clojure example deployable for shipjar"
  :dependencies [[org.clojure/clojure "1.11.1"]
                 [ring/ring-core "1.8.2"]
                 [ring/ring-jetty-adapter "1.8.2"]
                 [org.clojure/data.json "2.4.0"]
                 [org.clojure/tools.logging "1.2.4"]
                 [ch.qos.logback/logback-classic "1.2.11"]]
  ;; Debian's library poms ask for Clojure version "debian", which the repository
  ;; does not have under that name: pin the one it has.
  :managed-dependencies [[org.clojure/clojure "1.11.1"]]
  :local-repo "/usr/share/maven-repo"
  :offline? true
  :repositories ^:replace []
  :plugin-repositories ^:replace []
  :source-paths ["src/main/clojure"]
  :resource-paths ["src/main/resources"]
  :target-path "target/lein"
  :main inventory.main
  :aot [inventory.main]
  ;; AOT classes only, no .clj of the app beside them (Clojure would compare
  ;; timestamps and may recompile at start).
  :omit-source true
  :jvm-opts ["-Dclojure.compiler.direct-linking=true"])
