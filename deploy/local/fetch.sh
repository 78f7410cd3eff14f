#!/usr/bin/env bash
# Puts the pinned Kafka broker and its runtime jars into lib/ (or into
# $METERING_KAFKA_DIST/lib) via Maven Central, once; later runs do nothing.
# Usage: deploy/local/fetch.sh        (works from any directory)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dist="${METERING_KAFKA_DIST:-$here}"
lib="$dist/lib"
pom="$here/pom.xml"
[[ -f "$dist/pom.xml" ]] && pom="$dist/pom.xml"

version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom" | head -n 1)"
if [[ -z "$version" ]]; then
  echo "fetch.sh: no <kafka.version> in $pom" >&2
  exit 1
fi

if [[ -n "${METERING_KAFKA_DIST:-}" ]]; then
  # A distribution chosen by the user is taken as it is, whatever its version.
  if compgen -G "$lib/kafka_2.13-*.jar" >/dev/null; then
    exit 0
  fi
elif [[ -f "$lib/kafka_2.13-$version.jar" ]]; then
  exit 0
fi

if ! command -v mvn >/dev/null 2>&1; then
  echo "fetch.sh: Maven (mvn) not found: install Maven 3.6+ (e.g. apt-get install maven) to fetch Kafka $version, or set METERING_KAFKA_DIST to a directory whose lib/ holds the Kafka jars." >&2
  exit 1
fi
if ! command -v java >/dev/null 2>&1 && [[ -z "${JAVA_HOME:-}" ]]; then
  echo "fetch.sh: Java not found: install a JDK 17+ (e.g. apt-get install openjdk-17-jdk-headless) or set JAVA_HOME." >&2
  exit 1
fi

# Copy into a scratch directory and swap it in, so an interrupted download
# never leaves a lib/ that looks complete.
mkdir -p "$dist/target"
partial="$dist/target/lib.partial.$$"
trap 'rm -rf "$partial"' EXIT
echo "fetch.sh: fetching Kafka $version jars into $lib" >&2
# Debian's Maven 3.8 prints bare ANSI resets even in batch mode; strip them.
mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies "-Dlib.dir=$partial" 2>&1 |
  sed -e 's/\x1b\[[0-9;]*m//g' >&2
if [[ ! -f "$partial/kafka_2.13-$version.jar" ]]; then
  echo "fetch.sh: Maven finished but $partial/kafka_2.13-$version.jar is missing" >&2
  exit 1
fi
rm -rf "$lib"
mv "$partial" "$lib"
