"""What each queue's tickets say: the per-queue intents and the foreign-language tickets.

Owns the phrase tables the corpus generator (`loadgen.corpus`) draws from: for every queue
its base priorities and its intents (subject and body templates with `{slot}` holes, filled
from `loadgen.corpus_text.SLOTS`), and a few German/French/Spanish tickets per queue. Pure
data: no randomness, no I/O. The order of queues and phrases is part of the seeded output,
so appending changes every later ticket of a corpus; edit with that in mind.
"""

from __future__ import annotations

# queue -> (base priorities to draw from, intents); an intent is (subjects, bodies).
Intent = tuple[list[str], list[str]]
QUEUE_INTENTS: dict[str, tuple[list[str], list[Intent]]] = {
    "password_account": (
        ["P3", "P3", "P2", "P4"],
        [
            (
                [
                    "password reset",
                    "forgot my password",
                    "pwd expired",
                    "need password reset for {app}",
                    "cannot login - password",
                ],
                [
                    "I forgot my password and can't log in to my {device}.",
                    "My password expired {time} and the reset page says it breaks the policy",
                    "please reset my pwd, I'm locked out of windows",
                    "The self service password reset keeps failing with {error}.",
                ],
            ),
            (
                ["account locked", "AD account locked out", "locked out again", "user locked"],
                [
                    "My AD account is locked {time}, I tried my password too many times.",
                    "account keeps getting locked every hour, probably an old password on my phone",
                    "I am locked out of my account and cannot work.",
                ],
            ),
            (
                [
                    "MFA not working",
                    "new phone - MFA",
                    "authenticator app issue",
                    "2FA code rejected",
                    "SSO login loop",
                ],
                [
                    "I got a new phone and the MFA app doesn't have my account anymore.",
                    "The MFA prompt never arrives {time}, so I can't sign in to {app}.",
                    "SSO keeps redirecting me back to the login page when I open {app}.",
                    "Authenticator codes are rejected as invalid.",
                ],
            ),
            (
                ["cannot sign in", "login issue", "unable to log on", "username not recognised"],
                [
                    "When I sign in to {app} it says username or password wrong, but it is right.",
                    "login fails on my {device}: 'trust relationship with the domain failed'",
                    "can't log on {time}, it says my account is disabled",
                ],
            ),
        ],
    ),
    "access_request": (
        ["P4", "P4", "P3", "P5"],
        [
            (
                [
                    "access request: {share}",
                    "need access to {share}",
                    "permission to {share}",
                    "please grant access",
                ],
                [
                    "Please give me read/write access to {share}, my manager {person} approved it.",
                    "I need access to {share} for the new project starting next week.",
                    "Can you add me to the group that has access to {share}? I get access denied.",
                ],
            ),
            (
                ["add to group {group}", "AD group membership", "group membership request"],
                [
                    "Please add me to the AD group {group}.",
                    "New joiner {person} {surname} needs to be added to {group} and the inbox.",
                    "Request to add user to {group}, approved by line manager.",
                ],
            ),
            (
                [
                    "licence request for {desktop_app}",
                    "need a {app} licence",
                    "new user account for {person} {surname}",
                    "role request in {app}",
                ],
                [
                    "We need a licence for {desktop_app} for {person} in the design team.",
                    "Please create an account in {app} for our new starter {person} {surname}.",
                    "I need the approver role in {app} to sign off purchase orders.",
                    "requesting admin rights on my {device} to install dev tools",
                ],
            ),
        ],
    ),
    "hardware": (
        ["P3", "P4", "P3", "P2"],
        [
            (
                [
                    "{device} broken",
                    "{device} not working",
                    "broken screen",
                    "laptop won't turn on",
                    "replace {device}",
                ],
                [
                    "My {device} does not turn on {time}, the power light blinks orange.",
                    "The screen of my laptop is cracked after it fell off the desk.",
                    "my {device} is making a loud noise and gets very hot",
                    "The battery drains in 30 minutes, I need a replacement.",
                ],
            ),
            (
                [
                    "printer jam",
                    "printer offline",
                    "cannot print",
                    "{printer} not printing",
                    "toner empty",
                ],
                [
                    "{printer} shows paper jam but there is no paper stuck.",
                    "Printing to {printer} fails, the job stays in the queue forever.",
                    "Toner is empty on {printer}, please replace.",
                    "The printer at {site} prints blank pages.",
                ],
            ),
            (
                [
                    "docking station issue",
                    "second monitor not detected",
                    "headset not recognised",
                    "keyboard keys stuck",
                    "new mouse please",
                ],
                [
                    "My external monitor is not detected when I plug the laptop into the dock.",
                    "The headset is not recognised by the {device}, no sound in calls.",
                    "Several keys on the keyboard are stuck, need a new one.",
                    "The desk phone at {site} has no dial tone.",
                ],
            ),
        ],
    ),
    "software": (
        ["P4", "P3", "P4", "P3"],
        [
            (
                [
                    "install {desktop_app}",
                    "software install request",
                    "please install {desktop_app}",
                    "need {desktop_app} on my laptop",
                ],
                [
                    "Please install {desktop_app} on my laptop, it is not in the software center.",
                    "I need {desktop_app} installed for a customer project.",
                    "Software Center shows {desktop_app} but the install fails with {error}.",
                ],
            ),
            (
                [
                    "{desktop_app} crashes",
                    "{desktop_app} keeps crashing",
                    "{desktop_app} not responding",
                    "app freezes",
                ],
                [
                    "{desktop_app} crashes every time I open a file {time}.",
                    "{desktop_app} freezes and shows 'not responding' after the latest update.",
                    "When I start {desktop_app} it closes immediately without an error message.",
                ],
            ),
            (
                [
                    "update failed",
                    "{desktop_app} licence expired",
                    "activation error",
                    "windows update stuck",
                ],
                [
                    "{desktop_app} says my licence has expired and asks for an activation key.",
                    "Windows update is stuck at 35% {time} and my {device} restarts in a loop.",
                    "The {desktop_app} update failed with {error}, now it won't start.",
                ],
            ),
        ],
    ),
    "email_collaboration": (
        ["P3", "P3", "P4", "P2"],
        [
            (
                [
                    "outlook not syncing",
                    "emails not arriving",
                    "cannot send email",
                    "Outlook issue",
                    "mailbox full",
                ],
                [
                    "Outlook is not receiving new emails {time}, OWA shows them.",
                    "I cannot send emails, they stay in the outbox.",
                    "My mailbox is full and I can't send anything, please increase the quota.",
                    "Outlook keeps asking for my password and then disconnects.",
                ],
            ),
            (
                [
                    "calendar issue",
                    "shared mailbox access",
                    "meeting invites missing",
                    "distribution list change",
                ],
                [
                    "Meeting invites from {person} do not show in my calendar.",
                    "I lost access to the shared mailbox after my role change.",
                    "Please add {person} {surname} to the distribution list for the sales team.",
                    "Out of office reply does not work in Outlook.",
                ],
            ),
            (
                [
                    "Teams not working",
                    "Skype meeting issue",
                    "SharePoint site error",
                    "Teams call drops",
                ],
                [
                    "Teams calls drop after a few minutes {time}.",
                    "I can't join Skype meetings, it hangs on connecting.",
                    "The SharePoint site gives an error when I upload documents.",
                    "Teams shows me as offline all the time and messages arrive late.",
                ],
            ),
        ],
    ),
    "network_vpn": (
        ["P3", "P2", "P3", "P2"],
        [
            (
                [
                    "VPN not connecting",
                    "cannot connect to VPN",
                    "VPN drops",
                    "vpn issue",
                    "GlobalProtect error",
                ],
                [
                    "VPN does not connect from {site}, it fails with {error}.",
                    "The VPN keeps disconnecting every 10 minutes when I work from home.",
                    "can not connect vpn {time}, the client says gateway not reachable",
                    "After connecting to VPN I cannot reach any internal sites.",
                ],
            ),
            (
                [
                    "wifi issue",
                    "no internet",
                    "WiFi keeps dropping",
                    "network slow",
                    "LAN port dead",
                ],
                [
                    "The Wi-Fi at {site} keeps dropping, the whole team is affected.",
                    "No internet on my {device} when plugged into the LAN port at my desk.",
                    "The network is extremely slow {time}, pages time out.",
                    "Guest WiFi password does not work in the meeting rooms.",
                ],
            ),
            (
                [
                    "DNS issue",
                    "proxy blocking site",
                    "firewall rule request",
                    "cannot reach server",
                ],
                [
                    "Internal hostnames do not resolve {time}, DNS looks broken.",
                    "The proxy blocks a vendor site we need: {error}.",
                    "Please open firewall port 443 from {server} to the partner network.",
                    "Cannot ping {server} from the {site} subnet.",
                ],
            ),
        ],
    ),
    "database": (
        ["P2", "P3", "P2", "P1"],
        [
            (
                ["database connection error", "cannot connect to {db}", "DB down", "{db} timeout"],
                [
                    "Our application cannot connect to {db}: {error}.",
                    "Connections to {db} time out {time}.",
                    "The {db} instance seems down, all reports fail.",
                ],
            ),
            (
                ["slow query", "report very slow", "deadlocks on {db}", "tablespace full"],
                [
                    "Queries on {db} are extremely slow {time}, a simple select takes minutes.",
                    "We see many deadlocks on {db} during the nightly batch.",
                    "Tablespace USERS on {db} is 98% full, please extend.",
                    "The month end report query runs for hours.",
                ],
            ),
            (
                ["restore request", "backup failed", "need db access", "schema change request"],
                [
                    "Please restore yesterday's backup of {db} to the test environment.",
                    "The nightly backup of {db} failed with {error}.",
                    "I need read access to the sales schema on {db} for reporting.",
                    "Please run the attached schema change script on {db} tonight.",
                ],
            ),
        ],
    ),
    "servers_storage": (
        ["P2", "P2", "P3", "P1"],
        [
            (
                ["server down", "{server} not responding", "{server} unreachable", "VM crashed"],
                [
                    "{server} is not responding {time}, the application on it is down.",
                    "The VM {server} crashed and does not boot.",
                    "Monitoring shows {server} unreachable, users cannot open the app.",
                ],
            ),
            (
                ["disk space alert", "disk full on {server}", "filesystem 95%", "storage quota"],
                [
                    "Alert: /var on {server} is 95% full.",
                    "event critical: hostname {server} mountpoint /data threshold exceeded",
                    "The file server is out of space, nobody can save to {share}.",
                    "Please increase the storage quota of the project volume.",
                ],
            ),
            (
                [
                    "high CPU on {server}",
                    "memory alert",
                    "patching request",
                    "certificate expiring",
                ],
                [
                    "CPU on {server} is at 100% {time}.",
                    "Memory alert on {server}, swap is full.",
                    "Please schedule OS patching for {server} this weekend.",
                    "The SSL certificate on {server} expires in 5 days.",
                ],
            ),
        ],
    ),
    "business_applications": (
        ["P3", "P3", "P2", "P4"],
        [
            (
                ["{app} error", "error in {app}", "{app} not working", "issue with {app}"],
                [
                    "When I post an invoice in {app} I get {error}.",
                    "{app} shows an error when I try to approve the purchase order.",
                    "{app} is very slow {time} and times out on saving.",
                ],
            ),
            (
                [
                    "wrong data in {app}",
                    "report incorrect",
                    "sales order stuck",
                    "payroll data issue",
                ],
                [
                    "The sales order is stuck in status 'in process' in {app}.",
                    "The headcount report in {app} shows wrong numbers for my department.",
                    "My expense report was rejected in {app} but I can't see why.",
                    "Vacation balance in {app} is incorrect.",
                ],
            ),
            (
                ["{app} workflow", "cannot approve in {app}", "master data change"],
                [
                    "The approval workflow in {app} does not send tasks to my manager.",
                    "Please update the vendor master data in {app}: new bank details attached.",
                    "I cannot see the approve button in {app} for my team's timesheets.",
                ],
            ),
        ],
    ),
    "security_incident": (
        ["P2", "P1", "P2", "P1"],
        [
            (
                [
                    "phishing email",
                    "suspicious email",
                    "phishing?",
                    "fake invoice email",
                    "reported phishing",
                ],
                [
                    "I received a suspicious email asking me to confirm my password on a site.",
                    "I clicked a link in a mail that seemed to be from {person}, now I am worried.",
                    "Got an invoice attachment from an unknown sender, looks like phishing.",
                ],
            ),
            (
                ["virus alert", "malware detected", "antivirus popup", "ransomware?"],
                [
                    "The antivirus says it found malware on my {device} and quarantined a file.",
                    "Strange popups and my files have a weird extension now, is it ransomware?",
                    "Defender alert: trojan detected in the downloads folder.",
                ],
            ),
            (
                ["account compromised", "suspicious login", "data leak", "lost laptop"],
                [
                    "I got an MFA prompt I did not request, someone may have my password.",
                    "There are sign-ins to my account from another country.",
                    "I lost my laptop on the train, it has customer data on it.",
                    "A spreadsheet with salaries was shared publicly by mistake.",
                ],
            ),
        ],
    ),
    "cloud_devops": (
        ["P3", "P2", "P3", "P2"],
        [
            (
                ["pipeline failing", "{pipeline} build broken", "deploy failed", "CI job stuck"],
                [
                    "Our {pipeline} pipeline fails at the deploy step with {error}.",
                    "Builds in {pipeline} are queued for hours, no runner picks them up.",
                    "The production deploy failed halfway, please help roll back.",
                ],
            ),
            (
                [
                    "{cloud} access",
                    "kubernetes pods crashing",
                    "container image pull error",
                    "{cloud} quota",
                ],
                [
                    "Pods in {cloud} are in CrashLoopBackOff after the last release.",
                    "Image pull fails with {error} on the cluster.",
                    "We hit the vCPU quota in {cloud}, please raise it.",
                    "I need contributor access to the {cloud} subscription for the data team.",
                ],
            ),
            (
                ["terraform state lock", "helm release failed", "cloud cost spike"],
                [
                    "Terraform state is locked and nobody is running it.",
                    "helm upgrade failed and the release is now in pending state.",
                    "Our {cloud} bill tripled this week, something is scaling out of control.",
                ],
            ),
        ],
    ),
    "facilities_other": (
        ["P4", "P5", "P4", "P5"],
        [
            (
                [
                    "office too cold",
                    "light broken",
                    "desk booking",
                    "parking badge",
                    "coffee machine",
                ],
                [
                    "The air conditioning in the {site} meeting room is broken, it's freezing.",
                    "Light above my desk is flickering.",
                    "My badge does not open the parking garage at {site}.",
                    "The coffee machine on the 3rd floor is broken again.",
                ],
            ),
            (
                ["question", "general enquiry", "HR question", "where do I", "information needed"],
                [
                    "Who do I ask about my payslip?",
                    "Where can I find the travel policy?",
                    "I would like to order business cards.",
                    "How do I book a meeting room for 20 people at {site}?",
                ],
            ),
        ],
    ),
}


# A few tickets per queue in German, French and Spanish (subject, body).
FOREIGN: dict[str, list[tuple[str, str]]] = {
    "password_account": [
        ("Passwort zurücksetzen", "Ich habe mein Passwort vergessen und bin gesperrt."),
        ("mot de passe expiré", "Mon mot de passe a expiré, je ne peux plus me connecter."),
        ("contraseña bloqueada", "Mi cuenta está bloqueada, necesito restablecer la contraseña."),
    ],
    "access_request": [
        ("Zugriff auf Laufwerk", "Bitte Zugriff auf {share} für mich freischalten."),
        ("demande d'accès", "Merci de m'ajouter au groupe {group}."),
        ("solicitud de acceso", "Necesito acceso a {share} para el proyecto."),
    ],
    "hardware": [
        ("Drucker defekt", "Der Drucker {printer} druckt nicht mehr."),
        ("écran cassé", "L'écran de mon ordinateur portable est cassé."),
        ("portátil no enciende", "Mi portátil no enciende desde ayer."),
    ],
    "software": [
        ("Installation {desktop_app}", "Bitte {desktop_app} auf meinem Laptop installieren."),
        ("{desktop_app} plante", "{desktop_app} plante à chaque ouverture."),
        ("instalar {desktop_app}", "Necesito instalar {desktop_app} en mi equipo."),
    ],
    "email_collaboration": [
        ("Outlook Problem", "Outlook empfängt keine E-Mails mehr."),
        ("Teams ne marche pas", "Je ne peux pas rejoindre les réunions Teams."),
        ("correo no llega", "No recibo correos en Outlook desde esta mañana."),
    ],
    "network_vpn": [
        ("VPN Verbindung", "Das VPN verbindet sich nicht von zu Hause."),
        ("pas de wifi", "Le Wi-Fi ne fonctionne pas au bureau de Lyon."),
        ("VPN no conecta", "La VPN se desconecta constantemente."),
    ],
    "database": [
        ("Datenbank langsam", "Abfragen auf {db} sind sehr langsam."),
        ("base de données", "Impossible de se connecter à {db}: {error}."),
        ("base de datos caída", "La base de datos {db} no responde."),
    ],
    "servers_storage": [
        ("Server ausgefallen", "{server} antwortet nicht mehr."),
        ("disque plein", "Le disque de {server} est plein à 95%."),
        ("servidor caído", "El servidor {server} no responde."),
    ],
    "business_applications": [
        ("Fehler in {app}", "Beim Buchen in {app} kommt {error}."),
        ("erreur {app}", "{app} affiche une erreur à la validation."),
        ("error en {app}", "No puedo aprobar el pedido en {app}."),
    ],
    "security_incident": [
        ("Phishing Mail", "Ich habe eine verdächtige E-Mail bekommen und auf den Link geklickt."),
        ("virus détecté", "L'antivirus a détecté un virus sur mon PC."),
        ("correo sospechoso", "Recibí un correo sospechoso pidiendo mi contraseña."),
    ],
    "cloud_devops": [
        ("Pipeline fehlgeschlagen", "Die {pipeline} Pipeline schlägt beim Deploy fehl."),
        ("déploiement échoué", "Le déploiement sur {cloud} a échoué."),
        ("pods fallando", "Los pods en {cloud} se reinician en bucle."),
    ],
    "facilities_other": [
        ("Heizung kaputt", "Im Büro ist es sehr kalt, die Heizung geht nicht."),
        ("badge parking", "Mon badge n'ouvre pas le parking."),
        ("pregunta general", "¿Dónde encuentro la política de viajes?"),
    ],
}
