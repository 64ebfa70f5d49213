<?php
// The PHP side of the session-sharing tests: sessions in Redis through phpredis,
// in PHP's `php` format, under the same cookie as the Python workers use.
//   ?set=NAME  sets $_SESSION['user'];  ?n=1  increments $_SESSION['n'].
// Answers JSON: the session id, user, n and the keys PHP sees.
session_start();
if (isset($_GET['set'])) {
    $_SESSION['user'] = $_GET['set'];
}
if (isset($_GET['n'])) {
    $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
}
header('Content-Type: application/json');
header('Cache-Control: no-store');
echo json_encode([
    'id' => session_id(),
    'user' => $_SESSION['user'] ?? null,
    'n' => $_SESSION['n'] ?? null,
    'keys' => array_keys($_SESSION),
]);
