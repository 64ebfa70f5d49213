"""fcgi-cluster: nginx + php-fpm + shared sessions, for Python web apps.

The FastCGI core is ``fcgi_cluster.protocol``; the worker (php-fpm's role) is
``fcgi_cluster.worker``; the trio FastCGI client is ``fcgi_cluster.client``.
"""

__version__ = "0.1.0"
