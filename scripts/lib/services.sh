# Shared by scripts/demo, scripts/test and scripts/bench: make sure the local services exist and run.
# Installs from Debian's packages when something is missing (needs root, as on CI).

# Each step carries the time since the script started, so a CI log shows where the time went.
log() { printf '\033[1m==> [%d:%02d] %s\033[0m\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found: install $* yourself"
  [ "$(id -u)" = 0 ] || die "need root to install $* (or install it yourself)"
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
    APT_UPDATED=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" >/dev/null
}

# Waits until 127.0.0.1:$1 accepts connections, for at most $2 seconds.
wait_port() {
  local port=$1 deadline=$(( $(date +%s) + $2 ))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

php_fpm_bin() {
  ls /usr/sbin/php-fpm* 2>/dev/null | sort | tail -n 1
}

ensure_php_fpm() {
  if [ -z "$(php_fpm_bin)" ]; then
    apt_install php-fpm php-cli
  fi
  PHP_FPM_BIN=$(php_fpm_bin)
  [ -n "$PHP_FPM_BIN" ] || die "php-fpm still missing after install"
  export PHP_FPM_BIN
  log "php-fpm: $PHP_FPM_BIN"
}

# The frameworks the PHP packages bridge, from Debian's packages (there is no Composer registry
# on CI machines): the tests load their autoloaders under /usr/share/php.
PHP_FRAMEWORK_PACKAGES=(php-cli php-fpm php-amqp phpunit php-symfony-messenger php-symfony-amqp-messenger
  php-symfony-framework-bundle php-symfony-serializer php-symfony-property-access
  php-symfony-property-info php-symfony-yaml php-laravel-framework)

# Prints the Debian packages of "$@" that are not installed, one per line.
missing_packages() {
  local pkg
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || echo "$pkg"
  done
}

ensure_php_frameworks() {
  local missing
  mapfile -t missing < <(missing_packages "${PHP_FRAMEWORK_PACKAGES[@]}")
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
  command -v phpunit >/dev/null || die "phpunit still missing after install"
  php -m | grep -x amqp >/dev/null || die "the amqp extension is not loaded by php-cli"
}

ensure_rabbitmq() {
  if wait_port 5672 0; then
    log "RabbitMQ: already listening on 127.0.0.1:5672"
    return
  fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  log "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port 5672 120 || die "RabbitMQ did not listen on 5672 within 120 s"
  # The port opens before the broker accepts logins; wait for the app itself.
  local deadline=$(( $(date +%s) + 60 ))
  until rabbitmqctl -q await_startup >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "RabbitMQ did not finish starting"
    sleep 1
  done
  STARTED_RABBITMQ=1
}

ensure_rust() {
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"
}
