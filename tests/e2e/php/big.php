<?php
// ?n=BYTES (1 MiB by default) of a repeating pattern, written in 64 KiB
// echos so the body leaves php-fpm in many FastCGI records.
const CHUNK = 65536;
$remaining = max(0, (int)($_GET['n'] ?? 1048576));
$chunk = str_repeat('0123456789abcdef', CHUNK / 16);
header('Content-Type: application/octet-stream');
while ($remaining > 0) {
    $size = min($remaining, CHUNK);
    echo $size === CHUNK ? $chunk : substr($chunk, 0, $size);
    $remaining -= $size;
}
